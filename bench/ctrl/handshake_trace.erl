%% Where a handshake's time goes: N open/close cycles to a peer that keeps
%% an accept() pending, with call tracing of the control plane's steps on
%% both nodes; prints, for each step, the median time from the start of
%% open/3 at which it happened (the tracing itself adds a few us a step).
%% The peer's accept() loop is handshake_bench's: compile both into one
%% directory, then (with XENSTORED_PATH set to a private socket, and
%% Elixir's ebin directories on the path, as scripts/bench-handshake.sh does)
%%   erl -noshell -pa <that dir> -pa <tube ebin> -run handshake_trace main N
-module(handshake_trace).
-export([main/1, trace_on/1, collect/1]).

main([NStr]) ->
    N = list_to_integer(NStr),
    {Peer, D} = handshake_bench:start_pair(),
    [handshake_bench:cycle(D, I rem 8) || I <- lists:seq(1, 20)],
    Me = self(),
    T1 = spawn(fun() -> collect([]) end), trace_on(T1),
    T2 = peer:call(Peer, erlang, apply, [fun() -> T = spawn(fun() -> handshake_trace:collect([]) end), handshake_trace:trace_on(T), T end, []]),
    Starts = [S0 || {_Open, S0} <- [handshake_bench:cycle(D, I rem 8) || I <- lists:seq(1, N)]],
    erlang:trace(all, false, [all]),
    peer:call(Peer, erlang, trace, [all, false, [all]]),
    Ev1 = events(T1, Me),
    Ev2 = peer:call(Peer, erlang, apply, [fun() -> T2 ! {give, self()}, receive {evs, E} -> E end end, []]),
    All = lists:keysort(1, [{Ts, opener, E} || {Ts, E} <- Ev1] ++ [{Ts, acceptor, E} || {Ts, E} <- Ev2]),
    report(Starts, All),
    peer:stop(Peer),
    halt(0).

events(T, _Me) -> T ! {give, self()}, receive {evs, E} -> E end.

trace_on(Tracer) ->
    Ret = [{'_', [], [{return_trace}]}],
    Plain = [{'_', [], []}],
    [erlang:trace_pattern(MFA, MS, [local]) ||
        {MFA, MS} <- [{{tube_control, open, 3}, Ret},
                      {{tube_tubes_sup, start_tube, 2}, Ret},
                      {{tube_registry, open, 4}, Ret},
                      {{tube_registry, ready, 2}, Ret},
                      {{tube_registry, route, 2}, Plain},
                      {{tube_registry, handle_info, 2}, Plain},
                      {{tube_fsm, ask, 3}, Plain},
                      {{tube_nock, replied, 4}, Plain},
                      {{tube_tip, replied, 4}, Plain},
                      {{tube_nock, init, 1}, Plain},
                      {{tube_tip, init, 1}, Plain},
                      {{tube_nock, handle_event, 4}, Plain},
                      {{tube_tip, handle_event, 4}, Plain},
                      {{tube_nif, ring_offer, 1}, Ret},
                      {{tube_nif, ring_connect_start, 3}, Ret},
                      {{tube_nif, ring_connect_finish, 2}, Ret},
                      {{tube_nif, ring_accept, 2}, Ret},
                      {{tube_control, accept, 2}, Ret}]],
    erlang:trace(all, true, [call, timestamp, {tracer, Tracer}]),
    erlang:trace(Tracer, false, [all]),
    ok.

collect(Acc) ->
    receive
        {give, From} -> From ! {evs, lists:reverse(Acc)};
        {trace_ts, Pid, call, {M, F, A}, Ts} -> collect([{us(Ts), {Pid, call, M, F, label(M, F, A)}} | Acc]);
        {trace_ts, Pid, return_from, {M, F, _}, R, Ts} -> collect([{us(Ts), {Pid, return, M, F, short(R)}} | Acc]);
        _ -> collect(Acc)
    end.

us({M, S, U}) -> (M * 1000000 + S) * 1000000 + U.

label(tube_fsm, ask, [P | _]) -> P;
label(_, replied, [S, P | _]) -> {S, P};
label(_, handle_event, [info, {tube_xs_reply, _, _}, S, _]) -> {reply_in, S};
label(_, handle_event, [info, {tube_event, E}, S, _]) -> {event, short(E), S};
label(_, handle_event, [T, E, S, _]) -> {short(T), short(E), S};
label(tube_registry, route, [{watch, _, Tok} | _]) -> {route, binary:part(Tok, 0, min(3, byte_size(Tok)))};
label(tube_registry, handle_info, [{xs_events, _, Evs} | _]) -> {xs_events, length(Evs)};
label(tube_registry, handle_info, [M | _]) -> short(M);
label(_, _, _) -> [].

short(T) when is_tuple(T), tuple_size(T) > 0 -> element(1, T);
short(T) -> T.

%% For each handshake, the events between its start and the next one's.
report(Starts, All) ->
    Windows = lists:zip(Starts, tl(Starts) ++ [infinity]),
    Per = [[{T - S, Who, E} || {T, Who, E} <- All, T >= S, T < Next] || {S, Next} <- Windows],
    %% Label each event by its order of kind within the handshake.
    Keyed = [number(H) || H <- Per],
    Keys = lists:usort([K || H <- Keyed, {K, _} <- H]),
    Rows = [{handshake_bench:median([T || H <- Keyed, {K1, T} <- H, K1 =:= K]), length([x || H <- Keyed, {K1, _} <- H, K1 =:= K]), K} || K <- Keys],
    [io:format("~8.1f us  (~3b)  ~p~n", [M, C, K]) || {M, C, K} <- lists:sort(Rows), C >= length(Starts) div 2],
    ok.

number(H) ->
    {L, _} = lists:mapfoldl(fun({T, Who, {_Pid, Kind, M, F, Lab}}, Seen) ->
                                 K = {Who, Kind, M, F, Lab},
                                 N = maps:get(K, Seen, 0) + 1,
                                 {{{K, N}, T}, Seen#{K => N}}
                             end, #{}, H),
    L.

