%% @doc A TCP relay that delays a distribution connection of a test
%% network: it listens on the loopback interface for one connection (the
%% TCP carrier's, pointed here by {@link tube_net_epmd}), connects to the
%% real address, and passes the bytes both ways, each chunk after
%% `Latency' milliseconds, in order, one process per direction. It serves
%% that one connection and ends with it: when a side closes, what is still
%% held for the other is delivered, then both sockets close.
%%
%% Bytes are held, never dropped nor reordered: the distribution channel
%% stays reliable, only later.
-module(tube_net_relay).

-export([start/2]).

-define(ACCEPT_TIMEOUT, 30000).

%% @doc Starts a relay to Target (`{Ip, Port}'); `{ok, {Ip, Port}}' of its
%% listening socket, or `{error, Reason}'.
-spec start({inet:ip_address(), inet:port_number()}, pos_integer()) ->
          {ok, {inet:ip_address(), inet:port_number()}} | {error, term()}.
start(Target, Latency) when is_integer(Latency), Latency > 0 ->
    Opts = [binary, {ip, {127, 0, 0, 1}}, {active, false}, {packet, raw}, {nodelay, true}],
    case gen_tcp:listen(0, Opts) of
        {ok, L} ->
            {ok, Port} = inet:port(L),
            Pid = spawn(fun() -> receive {go, L} -> accept(L, Target, Latency) end end),
            ok = gen_tcp:controlling_process(L, Pid),
            Pid ! {go, L},
            {ok, {{127, 0, 0, 1}, Port}};
        E ->
            E
    end.

accept(L, {Ip, Port}, Latency) ->
    Accepted = gen_tcp:accept(L, ?ACCEPT_TIMEOUT),
    gen_tcp:close(L),
    case Accepted of
        {ok, In} ->
            case gen_tcp:connect(Ip, Port, [binary, {active, false}, {packet, raw}, {nodelay, true}]) of
                {ok, Out} ->
                    %% One process per direction, linked: the first to end
                    %% takes the other down, and each one's socket with it.
                    Back = spawn_link(fun() -> receive go -> pump(Out, In, Latency) end end),
                    ok = gen_tcp:controlling_process(Out, Back),
                    Back ! go,
                    pump(In, Out, Latency);
                _ ->
                    gen_tcp:close(In)
            end;
        _ ->
            ok
    end.

%% Reads From, writes to To Latency ms later, in order.
pump(From, To, Latency) ->
    ok = inet:setopts(From, [{active, once}]),
    pump(From, To, Latency, queue:new()).

pump(From, To, Latency, Q) ->
    receive
        {tcp, From, Data} ->
            ok = inet:setopts(From, [{active, once}]),
            Due = erlang:monotonic_time(millisecond) + Latency,
            queue:is_empty(Q) andalso erlang:send_after(Latency, self(), flush),
            pump(From, To, Latency, queue:in({Due, Data}, Q));
        flush ->
            case send_due(To, Q) of
                {ok, Q1} -> pump(From, To, Latency, Q1);
                closed -> exit(closed)
            end;
        {tcp_closed, From} ->
            drain(To, Q),
            exit(closed);
        {tcp_error, From, _} ->
            gen_tcp:close(From),
            drain(To, Q),
            exit(closed)
    end.

send_due(To, Q) ->
    Now = erlang:monotonic_time(millisecond),
    case queue:peek(Q) of
        {value, {Due, Data}} when Due =< Now ->
            case gen_tcp:send(To, Data) of
                ok -> send_due(To, queue:drop(Q));
                {error, _} -> closed
            end;
        {value, {Due, _}} ->
            erlang:send_after(Due - Now, self(), flush),
            {ok, Q};
        empty ->
            {ok, Q}
    end.

%% The sending side closed: what it sent still arrives, then the close.
drain(To, Q) ->
    case queue:peek(Q) of
        empty ->
            gen_tcp:close(To);
        {value, {Due, _}} ->
            Wait = max(Due - erlang:monotonic_time(millisecond), 0),
            receive after Wait -> ok end,
            case send_due(To, Q) of
                {ok, Q1} -> drain(To, Q1);
                closed -> ok
            end
    end.
