%% @doc Which nodes this node may exchange distribution traffic with while
%% a test network cuts it off from some of them, and which carrier the
%% connections to them take.
%%
%% A distribution carrier asks {@link permit/1} before it sets up a
%% connection to a node and when it accepts one from a node; a `false'
%% answer refuses the connection. The answer is one `persistent_term'
%% lookup: `true' for every node when no partition is in force, which is
%% the state of every node that never ran a test network.
%%
%% The state is set by `tube_net_agent' inside the nodes of a test network;
%% {@link block/2} and {@link clear/0} are its only writers. A
%% `persistent_term' update costs a scan of the node's processes, which is
%% right for a value written once per fault and read on every connection.
-module(tube_net_guard).

-export([permit/1, allowed/1, block/2, clear/0, blocked/0, refused/1,
         native/1, route/1, routed/0]).

-define(KEY, {?MODULE, blocked}).
-define(ROUTE, {?MODULE, not_native}).

%% @doc Whether the native carrier (`tube_dist') may be chosen for a
%% connection to Node: `false' for the nodes the test network sends over
%% the next carrier (`tube_net_tcp') instead, which are nodes of the
%% network that run no tube distribution, and nodes whose link is slowed
%% (`tube_net:slow_dist/4'). Asked by the carrier's `select/1', once per
%% connection set-up; one `persistent_term' lookup, `true' for every node
%% of a node that never ran a test network.
-spec native(node()) -> boolean().
native(Node) ->
    not maps:is_key(Node, persistent_term:get(?ROUTE, #{})).

%% @doc Sends the connections to the nodes in Nodes over the next carrier
%% from now on (see native/1); replaces the list in force. Existing
%% connections are left alone.
-spec route([node()]) -> ok.
route([]) ->
    _ = persistent_term:erase(?ROUTE),
    ok;
route(Nodes) when is_list(Nodes) ->
    persistent_term:put(?ROUTE, maps:from_keys(Nodes, true)).

%% @doc The nodes route/1 keeps off the native carrier now.
-spec routed() -> [node()].
routed() ->
    lists:sort(maps:keys(persistent_term:get(?ROUTE, #{}))).

%% @doc Whether a distribution connection to or from Node may exist now.
-spec permit(node()) -> boolean().
permit(Node) ->
    case persistent_term:get(?KEY, none) of
        none -> true;
        {Blocked, _Known} -> not maps:is_key(Node, Blocked)
    end.

%% @doc The `allowed' list to hand to `dist_util' when accepting a
%% connection, so that the handshake refuses a blocked node by its name
%% (the name is only known inside the handshake). `Allowed' is the list
%% `net_kernel:allow/1' set (empty: every node). With no partition in force
%% it is returned as it is. Otherwise the answer lists the nodes known to be
%% permitted (the network's nodes that are not blocked), kept to those
%% `Allowed' names when it names any; it is never empty, because an empty
%% list means "every node": when nothing is permitted it holds only this
%% node, which never connects to itself.
-spec allowed([node() | string()]) -> [node() | string()].
allowed(Allowed) ->
    case persistent_term:get(?KEY, none) of
        none ->
            Allowed;
        {Blocked, Known} ->
            Permitted = [N || N <- Known, not maps:is_key(N, Blocked)],
            Kept = case Allowed of
                       [] -> Permitted;
                       _ -> [N || N <- Permitted, dist_util:is_allowed(N, Allowed)]
                   end,
            case Kept of
                [] -> [node()];
                _ -> Kept
            end
    end.

%% @doc Refuses connections with the nodes in Blocked from now on. Known
%% lists every node this node may meet (the network's nodes), for
%% allowed/1. Existing connections are left alone: cutting them is the
%% caller's business (`erlang:disconnect_node/1').
-spec block([node()], [node()]) -> ok.
block([], _Known) ->
    clear();
block(Blocked, Known) when is_list(Blocked), is_list(Known) ->
    persistent_term:put(?KEY, {maps:from_keys(Blocked, true), Known}).

%% @doc Permits every node again.
-spec clear() -> ok.
clear() ->
    _ = persistent_term:erase(?KEY),
    ok.

%% @doc The nodes refused now.
-spec blocked() -> [node()].
blocked() ->
    case persistent_term:get(?KEY, none) of
        none -> [];
        {Blocked, _} -> lists:sort(maps:keys(Blocked))
    end.

%% @doc Tells the test network's agent on this node, if there is one, that
%% a connection with Node was refused. Called by a carrier off its critical
%% path (from the process that reports the failed set-up).
-spec refused(node()) -> ok.
refused(Node) ->
    case whereis(tube_net_agent) of
        undefined -> ok;
        Agent -> gen_server:cast(Agent, {refused, Node})
    end.
