%% Erlang distribution over tubes against inet_tcp_dist, in one run.
%%
%% For each carrier two BEAM OS processes are started (OTP's peer, driven
%% over standard I/O): `-proto_dist inet_tcp tube' for tube_dist, nothing
%% for inet_tcp_dist. Both pairs stay up, and the carriers take turns, round
%% by round, at each load. Node A measures, against node B:
%%   - small messages per second (a 64-byte binary, and a small tuple), sent
%%     one way to a counter that acknowledges the last one;
%%   - gen_server:call round trips, p50 and p99, and round trips of a plain
%%     message answered by a process (two messages where a call takes four:
%%     its monitor and the monitor's removal go as messages of their own);
%%   - throughput for 4 KiB, 64 KiB, 1 MiB and 16 MiB binaries, after two
%%     warm-up rounds, with the first round's figure beside it;
%%   - CPU per message and per 100 MB on both nodes (user and system time of
%%     each VM, from /proc/self/stat).
%% Results go to a JSON file and a table on standard output.
%%
%% `--only small,call,65536' measures those loads alone (a quick look at one
%% figure while tuning; the JSON then holds only their fields).
%%
%% Run through scripts/bench-dist.sh.
-module(tube_dist_bench).

-export([main/1]).
%% Run inside the nodes.
-export([counter/0, echo_init/0, small_rate/3, call_rtt/2, ping_rtt/2, throughput/3, throughput_for/3,
         runtime/0]).

-define(COOKIE, "tube_dist_bench").

main(Args) ->
    Opts = parse(Args, #{out => "bench-dist.json", scale => 1.0, busy_poll => default, only => all,
                    node_args => []}),
    persistent_term:put({?MODULE, busy_poll}, maps:get(busy_poll, Opts)),
    persistent_term:put({?MODULE, only}, maps:get(only, Opts)),
    persistent_term:put({?MODULE, node_args}, maps:get(node_args, Opts)),
    Scale = maps:get(scale, Opts),
    Pairs = [start_pair(C) || C <- [tube, tcp]],
    Results = try measure(Pairs, Scale) after [stop_pair(P) || P <- Pairs] end,
    Json = json(Results),
    ok = file:write_file(maps:get(out, Opts), Json),
    table(Results),
    io:format("~nJSON: ~s~n", [maps:get(out, Opts)]),
    halt(0).

parse(["--out", F | R], O) -> parse(R, O#{out => F});
parse(["--scale", S | R], O) -> parse(R, O#{scale => number(S)});
parse(["--dist-busy-poll", Us | R], O) -> parse(R, O#{busy_poll => list_to_integer(Us)});
parse(["--node-args", A | R], O) -> parse(R, O#{node_args => string:lexemes(A, " ")});
parse(["--only", L | R], O) -> parse(R, O#{only => [load(W) || W <- string:lexemes(L, ",")]});
parse([], O) -> O.

number(S) ->
    try list_to_float(S) catch error:badarg -> float(list_to_integer(S)) end.

load("small") -> small;
load("call") -> call;
load("ping") -> ping;
load(Size) -> list_to_integer(Size).

%% True when the load is to be measured (all of them unless `--only').
wanted(Load) ->
    case persistent_term:get({?MODULE, only}) of
        all -> true;
        Loads -> lists:member(Load, Loads)
    end.

%% ---- both carriers, in turn -------------------------------------------------

%% Rounds of each load per carrier. The host this runs on changes speed by
%% up to 2x within seconds, so the carriers take turns, round by round, and
%% each figure is the median of its rounds (percentiles: of all samples).
-define(ROUNDS, 5).
%% Throughput rounds run first on fresh nodes and not counted: the first
%% rounds run slower on both carriers while the allocators map their
%% carriers and the caches fill. The first round's figure is kept beside.
-define(WARM_ROUNDS, 2).
%% The length of a throughput round.
-define(ROUND_MS, 300).

%% A pair of nodes A and B connected over Carrier, B with the echo server
%% and the ponger.
start_pair(Carrier) ->
    Id = integer_to_list(erlang:unique_integer([positive])),
    A = start_node("bench_a_" ++ Id, Carrier),
    B = start_node("bench_b_" ++ Id, Carrier),
    {_, NodeB} = B,
    pong = call(A, net_adm, ping, [NodeB]),
    Proto = proto(call(A, net_kernel, node_info, [NodeB])),
    io:format("~p: connected over ~p~n", [Carrier, Proto]),
    _ = call(B, ?MODULE, echo_init, []),
    #{carrier => Carrier, protocol => Proto, a => A, b => B, node_b => NodeB}.

stop_pair(#{a := A, b := B}) ->
    stop_node(A),
    stop_node(B).

%% One map of figures per pair, in the order of Pairs.
measure(Pairs, Scale) ->
    Loads = [small_loads(Pairs, Scale),
             round_trips(call, call_rtt, {call_p50_us, call_p99_us}, Pairs, Scale),
             round_trips(ping, ping_rtt, {ping_p50_us, ping_p99_us}, Pairs, Scale),
             throughputs(Pairs, Scale)],
    [lists:foldl(fun(L, Acc) -> maps:merge(Acc, lists:nth(I, L)) end,
                 maps:with([carrier, protocol], P), Loads)
     || {I, P} <- lists:enumerate(Pairs)].

%% Runs Fun(Pair) for every pair in turn, Rounds times; for each pair, the
%% list of its results.
in_turn(Pairs, Rounds, Fun) ->
    ByRound = [[Fun(P) || P <- Pairs] || _ <- lists:seq(1, Rounds)],
    [[lists:nth(I, R) || R <- ByRound] || I <- lists:seq(1, length(Pairs))].

%% Nothing measured, for every pair.
none(Pairs) -> [#{} || _ <- Pairs].

small_loads(Pairs, Scale) ->
    case wanted(small) of
        false ->
            none(Pairs);
        true ->
            N = max(1000, round(300000 * Scale / ?ROUNDS)),
            {Bin, Cpu} = with_cpu(Pairs, fun() ->
                                  in_turn(Pairs, ?ROUNDS, fun(#{a := A, node_b := NodeB}) ->
                                                                  call(A, ?MODULE, small_rate, [NodeB, binary, N])
                                                          end)
                          end),
            Tuple = in_turn(Pairs, ?ROUNDS, fun(#{a := A, node_b := NodeB}) ->
                                                    call(A, ?MODULE, small_rate, [NodeB, tuple, N])
                                            end),
            [#{small_64b_per_s => median(Rs),
               small_tuple_per_s => median(Ts),
               cpu_us_per_msg_a => Ca * 1000 / (N * ?ROUNDS),
               cpu_us_per_msg_b => Cb * 1000 / (N * ?ROUNDS)}
             || {Rs, Ts, {Ca, Cb}} <- lists:zip3(Bin, Tuple, Cpu)]
    end.

%% The p50 and p99 of round-trip load Load, measured by Fun from node A
%% against node B, over the samples of all rounds, under the keys given.
round_trips(Load, Fun, {P50, P99}, Pairs, Scale) ->
    case wanted(Load) of
        false ->
            none(Pairs);
        true ->
            N = max(100, round(20000 * Scale / ?ROUNDS)),
            Samples = in_turn(Pairs, ?ROUNDS, fun(#{a := A, node_b := NodeB}) ->
                                                      maps:get(samples, call(A, ?MODULE, Fun, [NodeB, N]))
                                              end),
            [begin
                 S = list_to_tuple(lists:sort(lists:append(Rs))),
                 #{P50 => percentile(S, 0.5), P99 => percentile(S, 0.99)}
             end || Rs <- Samples]
    end.

%% Binaries of each size one way: rounds of ?ROUND_MS times Scale,
%% ?WARM_ROUNDS then ?ROUNDS measured. A round is a time, not a number of
%% bytes: a tube node that was idle takes a while (the emulator waking its
%% second scheduler) to reach its steady rate (64 KiB: about 3 GB/s in
%% rounds of 256 MiB, about 80 ms, against 5 GB/s in rounds of 1 GiB), and
%% a round of bytes would be four times longer for TCP than for a tube.
throughputs(Pairs, Scale) ->
    Sizes = [S || S <- [4096, 65536, 1 bsl 20, 16 bsl 20], wanted(S)],
    BySize = [{Size, throughput_rounds(Pairs, Size, Scale)} || Size <- Sizes],
    [#{throughput_mb_s => maps:from_list([{S, maps:get(median, lists:nth(I, T))} || {S, T} <- BySize]),
       throughput_range_mb_s => maps:from_list([{S, maps:get(range, lists:nth(I, T))} || {S, T} <- BySize]),
       throughput_first_mb_s => maps:from_list([{S, maps:get(first, lists:nth(I, T))} || {S, T} <- BySize]),
       %% CPU milliseconds of each VM per 100 MB sent: what a size costs,
       %% which a loaded machine changes less than the rate.
       cpu_ms_per_100mb_a => maps:from_list([{S, maps:get(cpu_a, lists:nth(I, T))} || {S, T} <- BySize]),
       cpu_ms_per_100mb_b => maps:from_list([{S, maps:get(cpu_b, lists:nth(I, T))} || {S, T} <- BySize])}
     || I <- lists:seq(1, length(Pairs))].

throughput_rounds(Pairs, Size, Scale) ->
    Ms = max(20, round(?ROUND_MS * Scale)),
    Round = fun(#{a := A, node_b := NodeB}) -> call(A, ?MODULE, throughput_for, [NodeB, Size, Ms]) end,
    Warm = in_turn(Pairs, ?WARM_ROUNDS, Round),
    {Runs, Cpu} = with_cpu(Pairs, fun() -> in_turn(Pairs, ?ROUNDS, Round) end),
    [begin
         Rates = [R || {R, _} <- Rounds],
         Mb = lists:sum([B || {_, B} <- Rounds]) / 1.0e6,
         #{median => median(Rates), range => [lists:min(Rates), lists:max(Rates)], first => First,
           cpu_a => Ca * 100 / Mb, cpu_b => Cb * 100 / Mb}
     end || {[{First, _} | _], Rounds, {Ca, Cb}} <- lists:zip3(Warm, Runs, Cpu)].

median(L) ->
    S = lists:sort(L),
    lists:nth((length(S) + 1) div 2, S).

percentile(Sorted, Q) ->
    element(max(1, round(Q * tuple_size(Sorted))), Sorted).

start_node(Name, Carrier) ->
    Paths = lists:append([["-pa", P] || P <- code:get_path()]),
    Proto = case Carrier of
                tube -> ["-proto_dist", "inet_tcp", "tube" | busy_poll_args()];
                tcp -> []
            end,
    {ok, Peer, Node} = peer:start(#{name => list_to_atom(Name), connection => standard_io,
                                    args => Paths ++ Proto ++ ["-setcookie", ?COOKIE]
                                            ++ persistent_term:get({?MODULE, node_args}),
                                    wait_boot => 60000}),
    {Peer, Node}.

stop_node({Peer, _}) -> catch peer:stop(Peer).

%% The tube nodes' dist_busy_poll: the library's default unless given.
busy_poll_args() ->
    case persistent_term:get({?MODULE, busy_poll}) of
        default -> [];
        Us -> ["-tube", "dist_busy_poll", integer_to_list(Us)]
    end.

call({Peer, _}, M, F, A) -> peer:call(Peer, M, F, A, 600000).

proto({ok, Info}) ->
    element(4, proplists:get_value(address, Info)).

%% Runs Fun(); with the CPU milliseconds each pair's nodes A and B used
%% meanwhile. The pairs take turns inside Fun, and a pair waiting for its
%% turn idles: a window around all the rounds reads the coarse counters
%% (10 ms) over a longer time than one round would.
with_cpu(Pairs, Fun) ->
    Cpu = fun() -> [{call(A, ?MODULE, runtime, []), call(B, ?MODULE, runtime, [])} || #{a := A, b := B} <- Pairs] end,
    Before = Cpu(),
    R = Fun(),
    After = Cpu(),
    {R, [{A1 - A0, B1 - B0} || {{A0, B0}, {A1, B1}} <- lists:zip(Before, After)]}.

%% ---- inside the nodes ------------------------------------------------------

%% CPU time of the whole VM (all threads, user and system), in
%% milliseconds. statistics(runtime) counts user time only, which leaves
%% out all that the kernel does for TCP: its copies and its loopback.
runtime() ->
    {ok, Stat} = file:read_file("/proc/self/stat"),
    %% The fields after the command's closing parenthesis, from the 3rd.
    [_, After] = string:split(Stat, ")", trailing),
    Fields = string:lexemes(After, " "),
    Ticks = binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)),
    Ticks * 10.

%% Counts messages; {count, From, N} answers once N have arrived, then
%% ends. Every measurement starts a counter of its own on the receiving
%% node (new_counter/1): a counter that fell behind a flood of small
%% messages keeps a heap of megabytes, and every later collection (which
%% large binaries set off often) would walk it, a cost of the bench and not
%% of the carrier, and larger for the carrier that delivered faster.
counter() ->
    counter(0).
counter(N) ->
    receive
        {count, From, Want} when N >= Want -> From ! {counted, N};
        {count, _, _} = Ask -> counter_wait(N, Ask);
        _ -> counter(N + 1)
    end.
counter_wait(N, {count, From, Want}) when N >= Want ->
    From ! {counted, N};
counter_wait(N, Ask) ->
    receive _ -> counter_wait(N + 1, Ask) end.

new_counter(Node) ->
    erpc:call(Node, erlang, spawn, [?MODULE, counter, []]).

%% A registered echo gen_server for the call round trips, and the ponger.
echo_init() ->
    register(bench_ponger, spawn(fun ponger/0)),
    {ok, _} = gen_server:start({local, bench_echo}, bench_echo_server(), [], []),
    ok.

bench_echo_server() -> tube_dist_bench_echo.

%% N small messages one way; messages per second.
small_rate(Node, Kind, N) ->
    Msg = case Kind of
              binary -> binary:copy(<<7>>, 64);
              tuple -> {small, 42, self()}
          end,
    Dest = new_counter(Node),
    T0 = erlang:monotonic_time(),
    send_n(Dest, Msg, N),
    Dest ! {count, self(), N},
    receive {counted, _} -> ok end,
    N / seconds(T0).

send_n(_Dest, _Msg, 0) -> ok;
send_n(Dest, Msg, N) -> Dest ! Msg, send_n(Dest, Msg, N - 1).

%% Answers {ping, From} with pong: a round trip of two messages, where a
%% gen_server:call to another node takes four (the monitor and its removal
%% go as messages of their own).
ponger() ->
    receive {ping, From} -> From ! pong end,
    ponger().

ping_rtt(Node, N) ->
    Dest = {bench_ponger, Node},
    Ping = fun() -> Dest ! {ping, self()}, receive pong -> ok end end,
    _ = [Ping() || _ <- lists:seq(1, 1000)],
    rtt(Ping, N).

%% N gen_server:call round trips; p50 and p99 in microseconds.
call_rtt(Node, N) ->
    Dest = {bench_echo, Node},
    _ = [gen_server:call(Dest, ping) || _ <- lists:seq(1, 1000)],
    rtt(fun() -> pong = gen_server:call(Dest, ping) end, N).

rtt(Fun, N) ->
    Ts = [begin
              T0 = erlang:monotonic_time(),
              Fun(),
              erlang:monotonic_time() - T0
          end || _ <- lists:seq(1, N)],
    Us = [us(T) || T <- Ts],
    S = list_to_tuple(lists:sort(Us)),
    #{p50 => percentile(S, 0.5), p99 => percentile(S, 0.99), samples => Us}.

%% N binaries of Size bytes one way; MB/s (10^6 bytes).
throughput(Node, Size, N) ->
    Bin = bytes(Size),
    Dest = new_counter(Node),
    T0 = erlang:monotonic_time(),
    send_n(Dest, Bin, N),
    Dest ! {count, self(), N},
    receive {counted, _} -> ok end,
    Size * N / 1.0e6 / seconds(T0).

%% Binaries of Size bytes one way for about Ms milliseconds, then until the
%% counter has them all: {MB/s (10^6 bytes), bytes}.
throughput_for(Node, Size, Ms) ->
    Bin = bytes(Size),
    Dest = new_counter(Node),
    %% The clock is read once per batch of about 1 MiB.
    Batch = max(1, (1 bsl 20) div Size),
    T0 = erlang:monotonic_time(),
    Until = T0 + erlang:convert_time_unit(Ms, millisecond, native),
    N = send_until(Dest, Bin, Batch, Until, 0),
    Dest ! {count, self(), N},
    receive {counted, _} -> ok end,
    {Size * N / 1.0e6 / seconds(T0), Size * N}.

send_until(Dest, Bin, Batch, Until, N) ->
    send_n(Dest, Bin, Batch),
    case erlang:monotonic_time() >= Until of
        true -> N + Batch;
        false -> send_until(Dest, Bin, Batch, Until, N + Batch)
    end.

%% Size bytes, made from 4 KiB blocks: copying one byte Size times would
%% take more CPU than sending them, and the bench counts the CPU.
bytes(Size) ->
    <<(binary:copy(binary:copy(<<3>>, 4096), Size div 4096))/binary,
      (binary:copy(<<3>>, Size rem 4096))/binary>>.

seconds(T0) ->
    erlang:convert_time_unit(erlang:monotonic_time() - T0, native, nanosecond) / 1.0e9.

us(Native) -> erlang:convert_time_unit(Native, native, nanosecond) / 1000.

%% ---- output ----------------------------------------------------------------

table(Results) ->
    [T, C] = Results,
    Row = fun(Label, Key) ->
                  io:format("~-34s ~14s ~14s ~8s~n",
                            [Label, fmt(get(Key, T)), fmt(get(Key, C)), ratio(Key, get(Key, T), get(Key, C))])
          end,
    io:format("~n~-34s ~14s ~14s ~8s~n", ["", "tube_dist", "inet_tcp_dist", "ratio"]),
    Row("64 B binary, msgs/s", small_64b_per_s),
    Row("small tuple, msgs/s", small_tuple_per_s),
    Row("gen_server:call p50, us", call_p50_us),
    Row("gen_server:call p99, us", call_p99_us),
    Row("message round trip p50, us", ping_p50_us),
    Row("message round trip p99, us", ping_p99_us),
    Row("CPU per 64 B msg, sender, us", cpu_us_per_msg_a),
    Row("CPU per 64 B msg, receiver, us", cpu_us_per_msg_b),
    [Row(io_lib:format("throughput ~s, MB/s", [size_label(S)]), {throughput_mb_s, S})
     || S <- [4096, 65536, 1 bsl 20, 16 bsl 20]],
    [Row(io_lib:format("  first round ~s, MB/s", [size_label(S)]), {throughput_first_mb_s, S})
     || S <- [4096, 65536, 1 bsl 20, 16 bsl 20]],
    [Row(io_lib:format("CPU ~s ~s, ms per 100 MB", [Who, size_label(S)]), {Key, S})
     || {Who, Key} <- [{"sender", cpu_ms_per_100mb_a}, {"receiver", cpu_ms_per_100mb_b}],
        S <- [4096, 65536, 1 bsl 20, 16 bsl 20]],
    ok.

get({K1, K2}, M) -> maps:get(K2, maps:get(K1, M), none);
get(K, M) -> maps:get(K, M, none).

%% How many times better tube is (for times and CPU: lower is better).
ratio(Key, T, C) when is_number(T), is_number(C), T > 0, C > 0 ->
    Lower = [call_p50_us, call_p99_us, ping_p50_us, ping_p99_us, cpu_us_per_msg_a, cpu_us_per_msg_b,
             cpu_ms_per_100mb_a, cpu_ms_per_100mb_b],
    R = case lists:member(element(1, key_of(Key)), Lower) of
            true -> C / T;
            false -> T / C
        end,
    io_lib:format("~.2fx", [R]);
ratio(_, _, _) -> "-".

key_of({K, _}) -> {K};
key_of(K) -> {K}.

fmt(X) when is_float(X), X >= 1000 -> integer_to_list(round(X));
fmt(X) when is_float(X) -> io_lib:format("~.2f", [X]);
fmt(none) -> "-";
fmt(X) -> io_lib:format("~p", [X]).

size_label(S) when S >= 1 bsl 20 -> integer_to_list(S bsr 20) ++ " MiB";
size_label(S) -> integer_to_list(S bsr 10) ++ " KiB".

json(Results) ->
    ["[", lists:join(",\n ", [json_map(R) || R <- Results]), "]\n"].

json_map(M) ->
    ["{", lists:join(", ", [[json_key(K), ": ", json_val(V)] || {K, V} <- lists:sort(maps:to_list(M))]), "}"].

json_key(K) when is_atom(K) -> ["\"", atom_to_list(K), "\""];
json_key(K) when is_integer(K) -> ["\"", integer_to_list(K), "\""].

json_val(V) when is_map(V) -> json_map(V);
json_val(V) when is_list(V) -> ["[", lists:join(", ", [json_val(X) || X <- V]), "]"];
json_val(V) when is_atom(V) -> ["\"", atom_to_list(V), "\""];
json_val(V) when is_integer(V) -> integer_to_list(V);
json_val(V) when is_float(V) -> float_to_list(V, [{decimals, 3}]).
