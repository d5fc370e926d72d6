%% @private
%% The control plane as its callers see it: these functions run in the
%% calling process and wait for nobody longer than the caller's timeout.
%% open/3 starts a tube_nock and waits for its ring; accept/2 waits for
%% tube_registry to hand over an incoming tube_tip's; close/1, lookup/1 and
%% tubes/0 read the registry's table, which the tube processes keep.
-module(tube_control).

-export([open/3, accept/2, attach/2, abort/1, close/1, lookup/1, tubes/0]).

-define(CLOSE_WAIT, 2000).

%% {ok, HandoffId, TubePid, {Role, Peer, Tid}} once the ring is mapped; the caller opens the
%% port and attaches it. The registry starts the tube_nock with the key
%% and the request, in one step; the nock answers through an alias that is
%% inactive once the caller has given up, so that a late answer never
%% reaches the caller.
open(Peer, Tid, Timeout) ->
    Deadline = case Timeout of
                   infinity -> infinity;
                   Ms -> erlang:monotonic_time(millisecond) + Ms
               end,
    Alias = erlang:alias([reply]),
    Tag = [alias | Alias],
    case tube_registry:open({nock, Peer, Tid}, {self(), Tag}, Deadline, left(Deadline)) of
        {ok, Pid} ->
            Mon = erlang:monitor(process, Pid),
            receive
                {Tag, Reply} ->
                    erlang:demonitor(Mon, [flush]),
                    Reply;
                {'DOWN', Mon, process, Pid, Reason} ->
                    erlang:unalias(Alias),
                    receive {Tag, Reply} -> Reply
                    after 0 -> {error, {control_plane, Reason}}
                    end
            after left(Deadline) ->
                erlang:unalias(Alias),
                erlang:demonitor(Mon, [flush]),
                gen_statem:cast(Pid, cancel),
                receive {Tag, Reply} -> Reply
                after 0 -> {error, timeout}
                end
            end;
        {error, _} = E ->
            erlang:unalias(Alias),
            E
    end.

left(infinity) -> infinity;
left(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).

accept(Tids, Timeout) ->
    try
        tube_registry:await_accept(Tids, Timeout)
    catch
        exit:{noproc, _} -> {error, not_started}
    end.

attach(Pid, Port) ->
    try
        gen_statem:call(Pid, {attach, Port}, ?CLOSE_WAIT)
    catch
        exit:_ -> {error, closed}
    end.

abort(Pid) -> gen_statem:cast(Pid, abort).

%% Closes the port at once; then waits a little for the tube's nodes to be
%% removed (a reopen of the same Tid waits for that removal in any case).
close(Port) ->
    case {erlang:port_info(Port, connected), tube_registry:row_of_port(Port)} of
        {{connected, _}, {ok, _Key, Pid, _Phase}} ->
            catch erlang:port_close(Port),
            Req = gen_statem:send_request(Pid, wait_closed),
            _ = gen_statem:receive_response(Req, ?CLOSE_WAIT),
            ok;
        _ ->
            {error, closed}
    end.

lookup(Port) ->
    case tube_registry:row_of_port(Port) of
        {ok, Key, _Pid, Phase} when Phase =/= closing -> {ok, describe(Key, Phase, Port)};
        _ -> {error, closed}
    end.

%% Tubes being opened or open; a closed tube whose nodes are still being
%% removed is not listed.
tubes() ->
    [describe(Key, Phase, Port) || {Key, _Pid, Phase, Port} <- tube_registry:rows(),
                                   Phase =/= closing, Phase =/= claimed].

describe({Role, Peer, Tid}, Phase, Port) ->
    #{role => Role, peer => Peer, tid => Tid, port => Port, state => Phase}.
