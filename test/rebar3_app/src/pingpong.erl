%% Ping-pong between two nodes over a tube.
%%
%% In one shell:   erl -noshell -pa _build/default/lib/*/ebin -pa _build/default/checkouts/*/ebin \
%%                     -eval 'pingpong:serve(100)'
%% It prints `domid D' once it waits for the tube. In another:
%%                 erl -noshell ... -eval 'pingpong:ping(D, 100)'
%% Each prints what it did and halts with status 0 on success, 1 otherwise.
-module(pingpong).

-export([serve/1, ping/2]).

-define(TID, 7).
-define(TIMEOUT, 30000).

%% Accepts one tube and sends back each of N packets, then waits for the
%% peer to close it.
serve(N) ->
    run(fun() ->
            {ok, _} = application:ensure_all_started(pingpong),
            io:format("domid ~b~n", [tube:domid()]),
            {ok, T} = tube:accept(#{timeout => ?TIMEOUT}),
            ok = echo(T, N),
            %% The pinger closes the tube once it has checked its counters.
            receive
                {tube_closed, T, peer_closed} -> io:format("served ~b~n", [N])
            after ?TIMEOUT -> error(not_closed)
            end
        end).

%% Opens the tube to Domid, sends N numbered packets and checks that each
%% comes back, in order.
ping(Domid, N) ->
    run(fun() ->
            {ok, _} = application:ensure_all_started(pingpong),
            {ok, T} = tube:open(Domid, ?TID, [{timeout, ?TIMEOUT}]),
            ok = pings(T, 0, N),
            {ok, #{sent := N, received := N}} = tube:info(T),
            ok = tube:close(T),
            io:format("pingpong ok ~b~n", [N])
        end).

echo(_T, 0) ->
    ok;
echo(T, N) ->
    receive
        {T, {data, P}} -> ok = tube:send(T, P), echo(T, N - 1)
    after ?TIMEOUT -> {error, timeout}
    end.

pings(_T, N, N) ->
    ok;
pings(T, I, N) ->
    Packet = <<I:32, "ping">>,
    ok = tube:send(T, Packet),
    receive
        {T, {data, Packet}} -> pings(T, I + 1, N)
    after ?TIMEOUT -> {error, {no_reply, I}}
    end.

run(Fun) ->
    try Fun() of
        _ -> halt(0)
    catch
        Class:Reason:Stack ->
            io:format("pingpong failed: ~p:~p~n~p~n", [Class, Reason, Stack]),
            halt(1)
    end.
