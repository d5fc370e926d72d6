%% Where a handshake's CPU goes: N open/close cycles to a peer that keeps
%% an accept() pending (handshake_bench's), with the CPU time (user and
%% system, from /proc) that the opening node, the accepting node and the
%% daemon used meanwhile, per cycle, against the wall time of a cycle.
%% When their sum nears twice the wall time, the two cores of this machine
%% are busy and a handshake waits for CPU, not for round trips. Run as
%% handshake_trace is:
%%   erl -noshell -pa <dir> -pa <tube ebin> -run handshake_cpu main N
-module(handshake_cpu).
-export([main/1]).

main([NStr]) ->
    N = list_to_integer(NStr),
    {Peer, D} = handshake_bench:start_pair(),
    [handshake_bench:cycle(D, I rem 8) || I <- lists:seq(1, 50)],
    Pids = [os:getpid(), peer:call(Peer, os, getpid, []), daemon_pid()],
    Hz = clock_ticks(),
    C0 = [ticks(P) || P <- Pids],
    T0 = erlang:monotonic_time(microsecond),
    Opens = [element(1, handshake_bench:cycle(D, I rem 8)) || I <- lists:seq(1, N)],
    T1 = erlang:monotonic_time(microsecond),
    C1 = [ticks(P) || P <- Pids],
    [O, A, Dm] = [(B - X) * 1000000 / Hz / N || {X, B} <- lists:zip(C0, C1)],
    io:format("per cycle: wall ~.1f us, open p50 ~.1f us; CPU opener ~.1f us, acceptor ~.1f us, "
              "daemon ~.1f us, sum ~.1f us~n",
              [(T1 - T0) / N, handshake_bench:median(Opens), O, A, Dm, O + A + Dm]),
    peer:stop(Peer),
    halt(0).

%% The daemon serving XENSTORED_PATH, from the pid file the application
%% starts it with (SOCKET.pid, as scripts/daemon.sh reads it too).
daemon_pid() ->
    Sock = os:getenv("XENSTORED_PATH"),
    case file:read_file(Sock ++ ".pid") of
        {ok, Pid} -> string:trim(binary_to_list(Pid));
        {error, Why} -> io:format("no daemon pid file for ~s: ~p~n", [Sock, Why]), halt(1)
    end.

clock_ticks() ->
    case string:to_integer(os:cmd("getconf CLK_TCK")) of
        {Hz, _} when is_integer(Hz), Hz > 0 -> Hz;
        _ -> 100
    end.

%% utime + stime of a process, in clock ticks (proc(5)).
ticks(Pid) ->
    {ok, B} = file:read_file("/proc/" ++ Pid ++ "/stat"),
    [_, Rest] = binary:split(B, <<") ">>),
    F = string:lexemes(binary_to_list(Rest), " "),
    list_to_integer(lists:nth(12, F)) + list_to_integer(lists:nth(13, F)).

