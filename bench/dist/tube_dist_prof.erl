%% A steady load between two nodes for perf: scripts/perf-dist.sh starts
%% this, reads the two nodes' OS pids from the file it names, and records
%% both with `perf record' while the load runs.
%%
%% Loads: `small' (64-byte binaries one way), `call' (gen_server:call round
%% trips), or a binary size in bytes (throughput one way).
-module(tube_dist_prof).

-export([main/1, busy_on/0, busy/0]).

-define(COOKIE, "tube_dist_prof").

main([CarrierS, LoadS, SecondsS, PidFile]) ->
    Carrier = list_to_atom(CarrierS),
    Seconds = list_to_integer(SecondsS),
    {PA, _} = A = start_node("prof_a", Carrier),
    {PB, NodeB} = B = start_node("prof_b", Carrier),
    try
        pong = peer:call(PA, net_adm, ping, [NodeB]),
        ok = peer:call(PB, tube_dist_bench, echo_init, []),
        ok = peer:call(PB, ?MODULE, busy_on, []),
        Pids = [peer:call(P, os, getpid, []) || P <- [PA, PB]],
        ok = file:write_file(PidFile, [lists:join(" ", Pids), "\n"]),
        Until = erlang:monotonic_time(millisecond) + Seconds * 1000,
        Rates = run(PA, B, load(LoadS), Until, []),
        io:format("~p ~s: ~p per round~n", [Carrier, LoadS, [R || {R, _} <- Rates]]),
        io:format("receiving node's schedulers, % busy per round: ~w~n", [[U || {_, U} <- Rates]])
    after
        [catch peer:stop(P) || {P, _} <- [A, B]]
    end,
    halt(0).

load("small") -> small;
load("call") -> call;
load(Size) -> list_to_integer(Size).

%% Rounds of about a second each until Until, each with how busy the
%% receiving node's schedulers were.
run(PA, {PB, NodeB} = B, Load, Until, Acc) ->
    case erlang:monotonic_time(millisecond) >= Until of
        true ->
            lists:reverse(Acc);
        false ->
            Busy0 = peer:call(PB, ?MODULE, busy, []),
            R = case Load of
                    small -> peer:call(PA, tube_dist_bench, small_rate, [NodeB, binary, 200000], 60000);
                    call -> maps:get(p50, peer:call(PA, tube_dist_bench, call_rtt, [NodeB, 20000], 60000));
                    Size -> peer:call(PA, tube_dist_bench, throughput, [NodeB, Size, max(8, (256 bsl 20) div Size)], 60000)
                end,
            Busy = busy_percent(Busy0, peer:call(PB, ?MODULE, busy, [])),
            run(PA, B, Load, Until, [{round(R), Busy} | Acc])
    end.

%% Scheduler wall time is counted while a process that asked for it
%% lives: one that never ends.
busy_on() ->
    Me = self(),
    spawn(fun() ->
                  erlang:system_flag(scheduler_wall_time, true),
                  Me ! on,
                  receive after infinity -> ok end
          end),
    receive on -> ok end.

%% The normal schedulers' {Id, Active, Total} wall times.
busy() ->
    N = erlang:system_info(schedulers),
    [S || {I, _, _} = S <- lists:sort(erlang:statistics(scheduler_wall_time)), I =< N].

busy_percent(S0, S1) ->
    [round(100 * (A1 - A0) / max(1, T1 - T0)) || {{I, A0, T0}, {I, A1, T1}} <- lists:zip(S0, S1)].

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
