%% A steady load between two nodes for perf: scripts/perf-dist.sh starts
%% this, reads the two nodes' OS pids from the file it names, and records
%% both with `perf record' while the load runs.
%%
%% Loads: `small' (64-byte binaries one way), `call' (gen_server:call round
%% trips), or a binary size in bytes (throughput one way).
-module(tube_dist_prof).

-export([main/1]).

-define(COOKIE, "tube_dist_prof").

main([CarrierS, LoadS, SecondsS, PidFile]) ->
    Carrier = list_to_atom(CarrierS),
    Seconds = list_to_integer(SecondsS),
    {PA, _} = A = start_node("prof_a", Carrier),
    {PB, NodeB} = B = start_node("prof_b", Carrier),
    try
        pong = peer:call(PA, net_adm, ping, [NodeB]),
        ok = peer:call(PB, tube_dist_bench, echo_init, []),
        Pids = [peer:call(P, os, getpid, []) || P <- [PA, PB]],
        ok = file:write_file(PidFile, [lists:join(" ", Pids), "\n"]),
        Until = erlang:monotonic_time(millisecond) + Seconds * 1000,
        Rates = run(PA, NodeB, load(LoadS), Until, []),
        io:format("~p ~s: ~p per round~n", [Carrier, LoadS, Rates])
    after
        [catch peer:stop(P) || {P, _} <- [A, B]]
    end,
    halt(0).

load("small") -> small;
load("call") -> call;
load(Size) -> list_to_integer(Size).

%% Rounds of about a second each until Until.
run(PA, NodeB, Load, Until, Acc) ->
    case erlang:monotonic_time(millisecond) >= Until of
        true ->
            lists:reverse(Acc);
        false ->
            R = case Load of
                    small -> peer:call(PA, tube_dist_bench, small_rate, [NodeB, binary, 200000], 60000);
                    call -> maps:get(p50, peer:call(PA, tube_dist_bench, call_rtt, [NodeB, 20000], 60000));
                    Size -> peer:call(PA, tube_dist_bench, throughput, [NodeB, Size, max(8, (256 bsl 20) div Size)], 60000)
                end,
            run(PA, NodeB, Load, Until, [round(R) | Acc])
    end.

start_node(Name, Carrier) ->
    Paths = lists:append([["-pa", P] || P <- code:get_path()]),
    Proto = case Carrier of
                tube -> ["-proto_dist", "inet_tcp", "tube"];
                tcp -> []
            end,
    Id = integer_to_list(erlang:unique_integer([positive])),
    {ok, Peer, Node} = peer:start(#{name => list_to_atom(Name ++ "_" ++ Id), connection => standard_io,
                                    args => Paths ++ Proto ++ ["-setcookie", ?COOKIE],
                                    wait_boot => 60000}),
    {Peer, Node}.
