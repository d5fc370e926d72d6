%% What a handshake costs the daemon: N open/close cycles to a peer that
%% keeps an accept() pending (handshake_bench's), counting on both nodes
%% the Xenstore requests sent (every batch goes through the native
%% client's tube_nif:xs_send/3, in this control plane as in older ones),
%% and prints them per cycle, by the kinds of request in a batch, with
%% their total round trips (batches) and requests. Run as handshake_trace is:
%%   erl -noshell -pa <dir> -pa <tube ebin> -run handshake_ops main N
-module(handshake_ops).
-export([main/1, count_on/0, counts/1]).

main([NStr]) ->
    N = list_to_integer(NStr),
    {Peer, D} = handshake_bench:start_pair(),
    [handshake_bench:cycle(D, I rem 8) || I <- lists:seq(1, 20)],
    T1 = count_on(),
    T2 = peer:call(Peer, ?MODULE, count_on, []),
    [handshake_bench:cycle(D, I rem 8) || I <- lists:seq(1, N)],
    timer:sleep(1500), % the last closing tubes' removals
    erlang:trace(all, false, [all]),
    peer:call(Peer, erlang, trace, [all, false, [all]]),
    report(N, opener, counts(T1)),
    report(N, acceptor, peer:call(Peer, ?MODULE, counts, [T2])),
    peer:stop(Peer),
    halt(0).

count_on() ->
    T = spawn(fun() -> loop(#{}) end),
    erlang:trace_pattern({tube_nif, xs_send, 3}, [{'_', [], []}], [local]),
    erlang:trace(all, true, [call, {tracer, T}]),
    erlang:trace(T, false, [all]),
    T.

counts(T) -> T ! {give, self()}, receive {counts, C} -> C end.

loop(C) ->
    receive
        {give, From} -> From ! {counts, C};
        {trace, _Pid, call, {tube_nif, xs_send, [_Conn, Reqs, _Ref]}} ->
            Kinds = lists:usort([kind(Type) || {Type, _, _} <- Reqs]),
            K = list_to_atom(lists:flatten(lists:join("+", [atom_to_list(X) || X <- Kinds]))),
            {B, O} = maps:get(K, C, {0, 0}),
            loop(C#{K => {B + 1, O + length(Reqs)}});
        _ -> loop(C)
    end.

%% Xenstore's message types (tube_xs).
kind(1) -> directory;
kind(2) -> read;
kind(3) -> get_perms;
kind(4) -> watch;
kind(5) -> unwatch;
kind(6) -> tx_start;
kind(7) -> tx_end;
kind(11) -> write;
kind(12) -> mkdir;
kind(13) -> rm;
kind(14) -> set_perms;
kind(17) -> is_introduced;
kind(N) -> list_to_atom("type" ++ integer_to_list(N)).

report(N, Who, C) ->
    {TB, TO} = maps:fold(fun(_, {B, O}, {AB, AO}) -> {AB + B, AO + O} end, {0, 0}, C),
    io:format("~s: ~.2f batches, ~.2f ops per handshake~n", [Who, TB / N, TO / N]),
    [io:format("    ~6.2f batches ~6.2f ops  ~s~n", [B / N, O / N, K]) || {K, {B, O}} <- lists:reverse(lists:keysort(2, maps:to_list(C)))],
    ok.
