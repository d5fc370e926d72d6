%% @private
%% The test network's agent inside one of its nodes (registered
%% `tube_net_agent'). It reports what this node sees to the network's
%% controller, and applies what the controller decides:
%% <ul>
%% <li>distribution connections up and down (`net_kernel:monitor_nodes/2'),
%% refused connections, raw tubes opened through {@link tube_net_link} up
%% and down, all sent to the controller as events;</li>
%% <li>partitions: the guard first ({@link tube_net_guard:block/2}), then
%% the existing connections and raw tubes to the blocked nodes are cut;</li>
%% <li>the latency and loss applied to raw tubes towards a peer, kept in
%% the public table `tube_net_shape' that {@link tube_net_link:send/2}
%% reads, and the queue of packets it delays;</li>
%% <li>the latency of distribution links (read by {@link tube_net_epmd}),
%% and which nodes the native carrier leaves to the TCP one
%% ({@link tube_net_guard:route/1}).</li>
%% </ul>
%%
%% Events travel over the peer's control connection (standard I/O), not
%% over distribution, so a partition never hides them: `user' is OTP's
%% `peer' I/O server, which forwards `{message, To, Term}' to `To' on the
%% controller's node.
-module(tube_net_agent).
-behaviour(gen_server).

-export([start/1, block/1, clear/0, connect/1, shape/2, register_tube/3,
         delay/2, global_sync/0, label/1, node_of/1, domid_of/1, label_of_domid/1, whereami/0,
         dist_latency/1, disconnect/1]).

-define(DISCONNECT_TIMEOUT, 10000).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(SHAPE, tube_net_shape).

-record(st, {
    controller :: atom(),              % registered name of the net's server
    me :: atom(),                      % this node's label
    labels :: #{node() => atom()},     % every node of the net
    domids :: #{atom() => pos_integer()},
    tcp_only = [] :: [node()],         % nodes of the net without tube distribution
    tubes = #{} :: #{reference() => {port(), atom(), non_neg_integer()}},
    queues = #{} :: #{port() => queue:queue({integer(), iodata()})}
}).

%% @doc Starts the agent. Conf: `controller', `me', `labels' (node =>
%% label), `domids' (label => domid), `blocked' (nodes refused from the
%% start, for a node restarted during a partition).
start(Conf) ->
    case gen_server:start({local, ?MODULE}, ?MODULE, Conf, []) of
        {ok, _} -> ok;
        E -> E
    end.

%% @doc Refuses distribution with Blocked from now on and cuts what exists.
block(Blocked) -> gen_server:call(?MODULE, {block, Blocked}, infinity).

%% @doc Permits every node again.
clear() -> gen_server:call(?MODULE, clear, infinity).

%% @doc Connects to each of Nodes: `{Node, already | true | false}' for
%% each (already connected, connected now, failed).
connect(Nodes) ->
    [{N, case lists:member(N, nodes()) of
             true -> already;
             false -> net_kernel:connect_node(N)
         end} || N <- Nodes].

%% @doc `global:sync/0', run here so that the controller needs no
%% knowledge of `global'.
global_sync() -> global:sync().

%% @doc Latency (ms) and loss ratio of raw tubes towards Peer (a label),
%% and the latency of the distribution link to it (`dist', ms), which the
%% next connection set up takes: through a relay ({@link tube_net_epmd}),
%% or natively again for 0. The connection in place is left alone: the
%% controller cuts it (disconnect/1) once both ends know.
shape(Peer, Shape) -> gen_server:call(?MODULE, {shape, Peer, Shape}, infinity).

%% @doc The latency (ms) of the distribution link to Node, 0 when it is not
%% slowed or no test network runs here. Read by the set-up of a connection.
-spec dist_latency(node()) -> non_neg_integer().
dist_latency(Node) ->
    try ets:lookup(?SHAPE, {dist, Node}) of
        [{_, L}] -> L;
        [] -> 0
    catch
        error:badarg -> 0
    end.

%% @doc Records a raw tube to Peer (a label) opened or accepted here.
register_tube(Port, Peer, Tid) -> gen_server:call(?MODULE, {register, Port, Peer, Tid}, infinity).

%% @doc Sends Data on Port after the latency set for its peer.
delay(Port, Data) -> gen_server:cast(?MODULE, {delay, Port, Data}).

%% @doc The label of a node of the net, or the node itself when it is not one.
label(Node) -> gen_server:call(?MODULE, {label, Node}).

%% @doc The node of a label; `error' if the net has no such node.
node_of(Label) -> gen_server:call(?MODULE, {node_of, Label}).

%% @doc The domid of a label or of a node; `error' if unknown.
domid_of(Peer) -> gen_server:call(?MODULE, {domid_of, Peer}).

%% @doc The label of the node with domain Domid, or Domid when none has it.
label_of_domid(Domid) -> gen_server:call(?MODULE, {label_of_domid, Domid}).

%% @doc This node's label.
whereami() -> gen_server:call(?MODULE, whereami).

init(Conf) ->
    #{controller := C, me := Me, labels := Labels, domids := Domids} = Conf,
    ?SHAPE = ets:new(?SHAPE, [named_table, public, {read_concurrency, true}]),
    ok = net_kernel:monitor_nodes(true, [{node_type, all}]),
    St = #st{controller = C, me = Me, labels = Labels, domids = Domids,
             tcp_only = [N || N <- maps:get(tcp_only, Conf, []), N =/= node()]},
    ok = guard(maps:get(blocked, Conf, []), St),
    ok = route(St),
    {ok, St}.

handle_call({block, Blocked}, _From, St) ->
    ok = guard(Blocked, St),
    cut(Blocked, St),
    {reply, ok, St};
handle_call(clear, _From, St) ->
    ok = tube_net_guard:clear(),
    {reply, ok, St};
handle_call({shape, Peer, Shape = #{latency := L, loss := R}}, _From, St) ->
    case L == 0 andalso R == 0 of
        true -> ets:delete(?SHAPE, Peer);
        false -> ets:insert(?SHAPE, {Peer, L, R})
    end,
    ok = dist_shape(Peer, maps:get(dist, Shape, 0), St),
    {reply, ok, St};
handle_call({register, Port, Peer, Tid}, _From, St) ->
    Ref = erlang:monitor(port, Port),
    case erlang:port_info(Port, id) of
        undefined ->
            erlang:demonitor(Ref, [flush]),
            {reply, {error, closed}, St};
        _ ->
            report({tube_up, St#st.me, Peer, Tid}, St),
            {reply, ok, St#st{tubes = maps:put(Ref, {Port, Peer, Tid}, St#st.tubes)}}
    end;
handle_call({label, Node}, _From, St) ->
    {reply, maps:get(Node, St#st.labels, Node), St};
handle_call({node_of, Label}, _From, St) ->
    Found = [N || {N, L} <- maps:to_list(St#st.labels), L =:= Label],
    {reply, case Found of [N] -> N; [] -> error end, St};
handle_call({domid_of, Peer}, _From, St) ->
    Label = maps:get(Peer, St#st.labels, Peer),
    {reply, maps:get(Label, St#st.domids, error), St};
handle_call({label_of_domid, Domid}, _From, St) ->
    Found = [L || {L, D} <- maps:to_list(St#st.domids), D =:= Domid],
    {reply, case Found of [L] -> L; [] -> Domid end, St};
handle_call(whereami, _From, St) ->
    {reply, St#st.me, St}.

handle_cast({refused, Node}, St) ->
    report({refused, St#st.me, label_of(Node, St)}, St),
    {noreply, St};
handle_cast({delay, Port, Data}, St) ->
    Latency = case ets:lookup(?SHAPE, peer_of(Port, St)) of
                  [{_, L, _}] -> L;
                  [] -> 0
              end,
    Due = erlang:monotonic_time(millisecond) + Latency,
    Q0 = maps:get(Port, St#st.queues, queue:new()),
    case queue:is_empty(Q0) of
        true -> erlang:start_timer(Latency, self(), {flush, Port});
        false -> ok
    end,
    {noreply, St#st{queues = maps:put(Port, queue:in({Due, Data}, Q0), St#st.queues)}}.

handle_info({nodeup, Node, _}, St) ->
    report({nodeup, St#st.me, label_of(Node, St)}, St),
    {noreply, St};
handle_info({nodedown, Node, _}, St) ->
    report({nodedown, St#st.me, label_of(Node, St)}, St),
    {noreply, St};
%% Any type: OTP 25 tags the DOWN of a port that died with a reason other
%% than an atom as `process'; the ref is a port monitor's either way.
handle_info({'DOWN', Ref, _, _Port, _}, St) ->
    case maps:take(Ref, St#st.tubes) of
        {{Port, Peer, Tid}, Tubes} ->
            ets:delete(?SHAPE, {tube, Port}),
            ets:delete(?SHAPE, {net_dropped, Port}),
            ets:delete(?SHAPE, {net_delayed, Port}),
            report({tube_down, St#st.me, Peer, Tid}, St),
            {noreply, St#st{tubes = Tubes, queues = maps:remove(Port, St#st.queues)}};
        error ->
            {noreply, St}
    end;
handle_info({timeout, _, {flush, Port}}, St) ->
    {noreply, flush(Port, St)};
handle_info(_, St) ->
    {noreply, St}.

%% Sends what is due on Port, in order, and waits for the rest.
flush(Port, St) ->
    case maps:find(Port, St#st.queues) of
        error ->
            St;
        {ok, Q} ->
            Now = erlang:monotonic_time(millisecond),
            Q1 = send_due(Port, Q, Now),
            case queue:peek(Q1) of
                empty ->
                    St#st{queues = maps:remove(Port, St#st.queues)};
                {value, {Due, _}} ->
                    erlang:start_timer(max(Due - Now, 0), self(), {flush, Port}),
                    St#st{queues = maps:put(Port, Q1, St#st.queues)}
            end
    end.

send_due(Port, Q, Now) ->
    case queue:peek(Q) of
        {value, {Due, Data}} when Due =< Now ->
            catch erlang:port_command(Port, Data),
            send_due(Port, queue:drop(Q), Now);
        _ ->
            Q
    end.

%% A new latency for the link to Peer: the connection set up next takes
%% it, so the one in place (if any) is cut, and the route changed first.
dist_shape(Peer, Latency, St) ->
    Node = node_of_label(Peer, St),
    case dist_latency(Node) of
        Latency ->
            ok;
        _ ->
            case Latency of
                0 -> ets:delete(?SHAPE, {dist, Node});
                _ -> ets:insert(?SHAPE, {{dist, Node}, Latency})
            end,
            route(St)
    end.

%% The nodes the native carrier must leave to the TCP one: those without
%% tube distribution, and those whose link is slowed.
route(St) ->
    Slowed = [N || [N] <- ets:match(?SHAPE, {{dist, '$1'}, '_'})],
    tube_net_guard:route(lists:usort(St#st.tcp_only ++ Slowed)).

%% @doc Cuts the connection to Node, if there is one, and returns once it
%% is down.
disconnect(Node) ->
    case lists:member(Node, nodes(connected)) of
        false ->
            ok;
        true ->
            true = erlang:monitor_node(Node, true),
            _ = erlang:disconnect_node(Node),
            receive
                {nodedown, Node} -> ok
            after ?DISCONNECT_TIMEOUT ->
                erlang:monitor_node(Node, false),
                ok
            end
    end.

node_of_label(Label, St) ->
    case [N || {N, L} <- maps:to_list(St#st.labels), L =:= Label] of
        [N] -> N;
        [] -> Label
    end.

guard(Blocked, St) ->
    tube_net_guard:block(Blocked, [N || N <- maps:keys(St#st.labels), N =/= node()]).

%% Distribution first: the guard already refuses a reconnection, so what is
%% cut stays cut.
cut(Blocked, St) ->
    [erlang:disconnect_node(N) || N <- Blocked, lists:member(N, nodes(connected))],
    BlockedLabels = [label_of(N, St) || N <- Blocked],
    [close_tube(Port) || {Port, Peer, _} <- maps:values(St#st.tubes),
                         lists:member(Peer, BlockedLabels)],
    ok.

%% The owner of a tube closed here learns it as it would of any other end
%% of a tube: `{tube_closed, Tube, partitioned}'. A tube the peer closed
%% first has told its owner `peer_closed' already.
close_tube(Port) ->
    Owner = erlang:port_info(Port, connected),
    case catch tube:close(Port) of
        ok ->
            case Owner of
                {connected, Pid} -> Pid ! {tube_closed, Port, partitioned};
                _ -> ok
            end;
        _ ->
            ok
    end.

peer_of(Port, St) ->
    case [P || {Pt, P, _} <- maps:values(St#st.tubes), Pt =:= Port] of
        [P | _] -> P;
        [] -> undefined
    end.

label_of(Node, St) -> maps:get(Node, St#st.labels, Node).

report(Event, #st{controller = C, me = Me}) ->
    user ! {message, C, {tube_net_event, Me, Event, tube_net_log:now()}},
    ok.
