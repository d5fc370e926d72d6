%% @doc Raw tubes between the nodes of a test network, opened so that the
%% network's faults reach them. Call these inside a node of the network
%% (through `tube_net:call/5' or from code running there).
%%
%% A tube opened with open/3 or accepted with accept/1 is an ordinary tube
%% port (see `tube'), owned by the caller, and the network also knows it:
%% <ul>
%% <li>its opening and its closing are events of the network log
%% (`{tube_up, Me, Peer, Tid}', `{tube_down, Me, Peer, Tid}');</li>
%% <li>a partition closes it when its two ends fall on different sides (its
%% owner gets `{tube_closed, Tube, partitioned}', or `peer_closed' when the
%% other end was cut first), and until the partition heals open/3 answers `{error, partitioned}' and
%% accept/1 closes tubes from the other side instead of returning them;</li>
%% <li>packets given to send/2 (not to `port_command/2') go through the
%% latency and the loss set with `tube_net:slow/4' and `tube_net:loss/4'
%% for that pair of nodes. Loss is decided on the sending side, each packet
%% dropped with the given probability and counted as `net_dropped' in
%% info/1; latency holds each packet for the given time in this node's
%% agent, in order, then sends it (counted as `net_delayed'). This is
%% done in Erlang, above the driver: the ring and its own counters see only
%% the packets that were let through.</li>
%% </ul>
%% Peers are named by their label in the network (`n1', `n2', ...) or by
%% their node name.
-module(tube_net_link).

-export([open/3, accept/1, send/2, info/1]).

-define(SHAPE, tube_net_shape).

%% @doc Opens tube Tid to Peer with the options of `tube:open/3'.
%% Errors: those of `tube:open/3', `{error, partitioned}' while a partition
%% separates this node from Peer, `{error, unknown_peer}'.
-spec open(atom(), tube:tid(), tube:open_opts()) -> {ok, tube:tube()} | {error, term()}.
open(Peer, Tid, Opts) ->
    case {tube_net_agent:node_of(label(Peer)), tube_net_agent:domid_of(Peer)} of
        {error, _} -> {error, unknown_peer};
        {_, error} -> {error, unknown_peer};
        {Node, Domid} ->
            case tube_net_guard:permit(Node) of
                false -> {error, partitioned};
                true -> opened(tube:open(Domid, Tid, Opts), label(Peer), Tid)
            end
    end.

%% @doc Waits for a tube from any node, with the options of
%% `tube:accept/1'; tubes from a node on the other side of a partition are
%% closed and not returned.
-spec accept(map()) -> {ok, tube:tube()} | {error, term()}.
accept(Opts) when is_map(Opts) ->
    Deadline = case maps:get(timeout, Opts, infinity) of
                   infinity -> infinity;
                   T when is_integer(T), T >= 0 -> erlang:monotonic_time(millisecond) + T;
                   _ -> erlang:error(badarg)
               end,
    accept_until(Opts, Deadline);
accept(_) ->
    erlang:error(badarg).

%% @doc Sends Data on Tube through the pair's latency and loss. Returns
%% `ok' (sent, delayed or dropped by the network as asked); raises `badarg'
%% for a closed tube as `port_command/2' does.
-spec send(tube:tube(), iodata()) -> ok.
send(Tube, Data) ->
    case shape(Tube) of
        none ->
            true = erlang:port_command(Tube, Data),
            ok;
        {Latency, Loss} ->
            case Loss > 0 andalso rand:uniform() < Loss of
                true ->
                    count(Tube, net_dropped);
                false when Latency > 0 ->
                    erlang:port_info(Tube, id) =:= undefined andalso erlang:error(badarg),
                    count(Tube, net_delayed),
                    tube_net_agent:delay(Tube, Data);
                false ->
                    true = erlang:port_command(Tube, Data),
                    ok
            end
    end.

%% @doc `tube:info/1' plus the counts of send/2: `net_dropped', `net_delayed'.
-spec info(tube:tube()) -> {ok, map()} | {error, closed}.
info(Tube) ->
    case tube:info(Tube) of
        {ok, I} -> {ok, I#{net_dropped => counter(Tube, net_dropped),
                           net_delayed => counter(Tube, net_delayed)}};
        E -> E
    end.

accept_until(Opts, Deadline) ->
    Left = case Deadline of
               infinity -> infinity;
               _ -> max(Deadline - erlang:monotonic_time(millisecond), 0)
           end,
    case tube:accept(Opts#{timeout => Left}) of
        {ok, T} ->
            {ok, #{peer := Domid, tid := Tid}} = tube:info(T),
            Peer = peer_label(Domid),
            case permitted(Peer) of
                true ->
                    opened({ok, T}, Peer, Tid);
                false ->
                    _ = tube:close(T),
                    accept_until(Opts, Deadline)
            end;
        E ->
            E
    end.

opened({ok, T}, Peer, Tid) ->
    ets:insert(?SHAPE, {{tube, T}, Peer}),
    case tube_net_agent:register_tube(T, Peer, Tid) of
        ok -> {ok, T};
        E -> E
    end;
opened(E, _, _) ->
    E.

permitted(Peer) when is_atom(Peer) ->
    case tube_net_agent:node_of(Peer) of
        error -> true;
        Node -> tube_net_guard:permit(Node)
    end;
permitted(_Domid) ->
    true.

%% A domid outside the network stays a domid.
peer_label(Domid) -> tube_net_agent:label_of_domid(Domid).

label(Peer) ->
    case tube_net_agent:label(Peer) of
        L when is_atom(L) -> L;
        _ -> Peer
    end.

shape(Tube) ->
    case ets:lookup(?SHAPE, {tube, Tube}) of
        [{_, Peer}] ->
            case ets:lookup(?SHAPE, Peer) of
                [{_, L, R}] -> {L, R};
                [] -> none
            end;
        [] ->
            none
    end.

count(Tube, What) ->
    _ = ets:update_counter(?SHAPE, {What, Tube}, 1, {{What, Tube}, 0}),
    ok.

counter(Tube, What) ->
    case ets:lookup(?SHAPE, {What, Tube}) of
        [{_, N}] -> N;
        [] -> 0
    end.
