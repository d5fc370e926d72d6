%% What a Xenstore round trip costs after the machine was idle: N reads of
%% one node from a process that waits in receive for the reply, back to
%% back, and after a pause of 2 or 20 ms (threads and cores asleep); the
%% same with the caller polling its mailbox instead of sleeping, and with
%% the request made by one or two processes in between (a hop each way).
%% Prints p50 and p90 of each. Run as handshake_trace is:
%%   erl -noshell -pa <dir> -pa <tube ebin> -run xs_idle_rt main N
%% (<dir> holds handshake_bench too).
-module(xs_idle_rt).
-export([main/1]).

main([NStr]) ->
    N = list_to_integer(NStr),
    handshake_bench:started(application:ensure_all_started(tube)),
    {ok, C} = tube_registry:conn(),
    Path = tube_paths:tip_dir(tube:domid()),
    _ = [rt(C, Path, wait) || _ <- lists:seq(1, 200)],
    [run(C, Path, N, Mode, Pause) || {Mode, Pause} <- [{wait, 0}, {wait, 2}, {poll, 2}, {wait, 20}, {poll, 20},
                                                       {one_hop, 2}, {two_hops, 2}]],
    halt(0).

run(C, Path, N, Mode, Pause) ->
    L = [begin pause(Pause), rt(C, Path, Mode) end || _ <- lists:seq(1, N)],
    io:format("~-8w after ~2w ms idle: p50 ~6.1f us, p90 ~6.1f us~n", [Mode, Pause, handshake_bench:pct(L, 50), handshake_bench:pct(L, 90)]).

pause(0) -> ok;
pause(Ms) -> receive after Ms -> ok end.

rt(C, Path, wait) ->
    T0 = erlang:monotonic_time(microsecond),
    Ref = tube_xs:send(C, [{r, {read, 0, Path}}]),
    receive {tube_xs_reply, Ref, _} -> ok end,
    erlang:monotonic_time(microsecond) - T0;
rt(C, Path, poll) ->
    T0 = erlang:monotonic_time(microsecond),
    poll(tube_xs:send(C, [{r, {read, 0, Path}}])),
    erlang:monotonic_time(microsecond) - T0;
rt(C, Path, one_hop) ->
    via([requester(C, Path)]);
rt(C, Path, two_hops) ->
    R = requester(C, Path),
    via([relay(R), R]).

poll(Ref) ->
    receive {tube_xs_reply, Ref, _} -> ok after 0 -> poll(Ref) end.

%% Asks the first of Ps, which passes the request on; the reply comes back
%% the same way.
via(Ps = [First | _]) ->
    T0 = erlang:monotonic_time(microsecond),
    First ! {go, self()},
    receive {done, _} -> ok end,
    T = erlang:monotonic_time(microsecond) - T0,
    [exit(P, kill) || P <- Ps],
    T.

requester(C, Path) ->
    spawn(fun Loop() ->
                  receive
                      {go, From} ->
                          Ref = tube_xs:send(C, [{r, {read, 0, Path}}]),
                          receive {tube_xs_reply, Ref, R} -> From ! {done, R} end,
                          Loop()
                  end
          end).

relay(Next) ->
    spawn(fun() -> receive {go, From} -> Next ! {go, self()}, receive {done, R} -> From ! {done, R} end end end).
