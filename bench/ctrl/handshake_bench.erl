%% Handshake timing: N open/close cycles from this node to a peer node
%% that keeps an accept() pending; prints p50/p90 of open/3 and of accept/1.
%% start_pair/0 and cycle/2 are also handshake_trace's and handshake_ops'.
-module(handshake_bench).
-export([main/1, acceptor/1, start_pair/0, started/1, cycle/2, median/1, pct/2]).

main([NStr]) ->
    N = list_to_integer(NStr),
    {Peer, D} = start_pair(),
    %% warm up
    Runs = [cycle(D, I rem 8) || I <- lists:seq(1, N + 20)],
    Accepted = lists:nthtail(20, peer:call(Peer, erlang, apply, [fun() -> hs_acceptor ! {times, self()}, receive {ts, T} -> T end end, []])),
    {Opens, Starts} = lists:unzip(lists:nthtail(20, Runs)),
    Accepts = [A - S || {A, S} <- lists:zip(lists:sublist(Accepted, length(Starts)), lists:sublist(Starts, length(Accepted)))],
    io:format("open p50 ~.1f us p90 ~.1f us; open start to accept return p50 ~.1f us p90 ~.1f us (n=~p; open max ~.1f us)~n",
              [pct(Opens, 50), pct(Opens, 90), pct(Accepts, 50), pct(Accepts, 90), N, pct(Opens, 100)]),
    peer:stop(Peer),
    halt(0).

%% Starts tube here and in a peer node whose acceptor keeps an accept()
%% pending; returns the peer and its domid.
start_pair() ->
    started(application:ensure_all_started(tube)),
    Paths = lists:append([["-pa", P] || P <- code:get_path()]),
    {ok, Peer, _} = peer:start_link(#{connection => standard_io, args => Paths, wait_boot => 30000}),
    started(peer:call(Peer, application, ensure_all_started, [tube], 30000)),
    D = peer:call(Peer, tube, domid, []),
    ok = peer:call(Peer, ?MODULE, acceptor, [self()]),
    {Peer, D}.

%% Halts with the reason when tube did not start.
started({ok, _}) -> ok;
started(E) -> io:format("tube did not start: ~p~n", [E]), halt(1).

cycle(D, Tid) ->
    S0 = erlang:system_time(microsecond),
    T0 = erlang:monotonic_time(microsecond),
    {ok, T} = tube:open(D, Tid, #{timeout => 10000}),
    T1 = erlang:monotonic_time(microsecond),
    _ = tube:close(T),
    {T1 - T0, S0}.

acceptor(_Parent) ->
    Pid = spawn(fun() -> acc_loop([]) end),
    register(hs_acceptor, Pid),
    ok.

acc_loop(Ts) ->
    receive
        {times, From} -> From ! {ts, lists:reverse(Ts)}, acc_loop(Ts)
    after 0 ->
        case tube:accept(#{timeout => 200}) of
            {ok, T} ->
                T1 = erlang:system_time(microsecond),
                catch port_close(T),
                acc_loop([T1 | Ts]);
            {error, timeout} ->
                acc_loop(Ts)
        end
    end.

%% The lower middle of a list of numbers, as a float.
median(L) -> lists:nth(max(1, (length(L) + 1) div 2), lists:sort(L)) * 1.0.

pct(L, P) ->
    S = lists:sort(L),
    lists:nth(max(1, round(length(S) * P / 100)), S) * 1.0.
