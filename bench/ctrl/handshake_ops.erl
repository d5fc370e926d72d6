%% What a handshake costs the daemon: N open/close cycles to a peer that
%% keeps an accept() pending (handshake_bench's), counting on both nodes
%% the Xenstore requests the control plane sends (tube_xs:send/2 batches
%% and the operations in them, by purpose where the sender names one) and
%% prints them per cycle. Run as handshake_trace is:
%%   erl -noshell -pa <dir> -pa <tube ebin> -run handshake_ops main N
-module(handshake_ops).
-export([main/1, count_on/0, counts/1]).

main([NStr]) ->
    N = list_to_integer(NStr),
    {ok, _} = application:ensure_all_started(tube),
    Paths = lists:append([["-pa", P] || P <- code:get_path()]),
    {ok, Peer, _} = peer:start_link(#{connection => standard_io, args => Paths, wait_boot => 30000}),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [tube], 30000),
    D = peer:call(Peer, tube, domid, []),
    ok = peer:call(Peer, handshake_bench, acceptor, [self()]),
    [cycle(D, I rem 8) || I <- lists:seq(1, 20)],
    T1 = count_on(),
    T2 = peer:call(Peer, ?MODULE, count_on, []),
    [cycle(D, I rem 8) || I <- lists:seq(1, N)],
    timer:sleep(1500), % the last closing tubes' removals
    erlang:trace(all, false, [all]),
    peer:call(Peer, erlang, trace, [all, false, [all]]),
    report(N, opener, counts(T1)),
    report(N, acceptor, peer:call(Peer, ?MODULE, counts, [T2])),
    peer:stop(Peer),
    halt(0).

cycle(D, Tid) ->
    {ok, T} = tube:open(D, Tid, #{timeout => 10000}),
    _ = tube:close(T).

count_on() ->
    T = spawn(fun() -> loop(#{}) end),
    erlang:trace_pattern({tube_xs, send, 2}, [{'_', [], []}], [local]),
    erlang:trace(all, true, [call, {tracer, T}]),
    erlang:trace(T, false, [all]),
    T.

counts(T) -> T ! {give, self()}, receive {counts, C} -> C end.

loop(C) ->
    receive
        {give, From} -> From ! {counts, C};
        {trace, _Pid, call, {tube_xs, send, [_Conn, Batch]}} ->
            Names = lists:usort([purpose(Name) || {Name, _} <- Batch]),
            K = list_to_atom(lists:flatten(lists:join("+", [atom_to_list(X) || X <- Names]))),
            {B, O} = maps:get(K, C, {0, 0}),
            loop(C#{K => {B + 1, O + length(Batch)}});
        _ -> loop(C)
    end.

purpose(N) when is_atom(N) -> N;
purpose({N, _}) when is_atom(N) -> N;
purpose(_) -> other.

report(N, Who, C) ->
    {TB, TO} = maps:fold(fun(_, {B, O}, {AB, AO}) -> {AB + B, AO + O} end, {0, 0}, C),
    io:format("~s: ~.2f batches, ~.2f ops per handshake~n", [Who, TB / N, TO / N]),
    [io:format("    ~6.2f batches ~6.2f ops  ~s~n", [B / N, O / N, K]) || {K, {B, O}} <- lists:reverse(lists:keysort(2, maps:to_list(C)))],
    ok.
