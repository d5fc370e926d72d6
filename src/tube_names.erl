%% @private
%% Node names and domids: each node publishes its Erlang node name at
%% /local/domain/<domid>/name (readable by every domain), and looks others
%% up there. Answers are cached in tube_registry's table; the registry
%% forgets them all when a domain is released. A miss costs one bounded
%% lookup in the calling process, never a wait on the registry.
-module(tube_names).

-export([domid/1, node_of/1, tube_dist/1]).

-define(TAB, tube_registry).
-define(LOOKUP_TIMEOUT, 1000).

-spec domid(node()) -> {ok, tube:domid()} | {error, not_found}.
domid(Node) ->
    case catch ets:lookup(?TAB, {name, Node}) of
        [{_, D}] -> {ok, D};
        _ -> lookup(Node)
    end.

%% True when Node is on this host and its distribution listens on tubes
%% (its domain publishes the carrier's mark with its name): the one
%% question tube_dist:select/1 asks, answered from the cache after the
%% first look.
-spec tube_dist(node()) -> boolean().
tube_dist(Node) ->
    case catch ets:lookup(?TAB, {tube_dist, Node}) of
        [{_, Dist}] ->
            Dist;
        _ ->
            _ = lookup(Node),
            case catch ets:lookup(?TAB, {tube_dist, Node}) of
                [{_, Dist}] -> Dist;
                _ -> false
            end
    end.

-spec node_of(tube:domid()) -> node() | undefined.
node_of(D) ->
    case catch ets:lookup(?TAB, {domain_name, D}) of
        [{_, Node}] ->
            Node;
        _ ->
            case read_names([D]) of
                #{D := Node} -> Node;
                _ -> undefined
            end
    end.

%% The names of the domains of this host's nodes, read in one batch: an
%% unprivileged domain cannot list /local/domain, but every node leases its
%% domid beside the daemon's socket (tube_lease), and its name is readable.
lookup(Node) ->
    Names = read_names(tube_lease:held()),
    case [D || {D, N} <- maps:to_list(Names), N =:= Node] of
        [D | _] -> {ok, D};
        [] -> {error, not_found}
    end.

read_names(Domids) ->
    case tube_registry:conn() of
        {ok, C} ->
            Chunks = chunks(Domids, 200),
            lists:foldl(fun(Chunk, Acc) -> maps:merge(Acc, read_chunk(C, Chunk)) end, #{}, Chunks);
        {error, _} ->
            #{}
    end.

%% A domain's carrier mark is read before its name (a node writes them in
%% that order), so a name read with no mark is a node without the carrier.
read_chunk(C, Domids) ->
    Batch = lists:append([[{{dist, D}, {read, 0, tube_paths:dist(D)}},
                           {D, {read, 0, tube_paths:name(D)}}] || D <- Domids]),
    case tube_xs:named(C, Batch, ?LOOKUP_TIMEOUT) of
        #{} = Res ->
            maps:from_list([remember(D, binary_to_atom(Name), maps:get({dist, D}, Res, none) =:= {ok, <<"tube">>})
                            || {D, {ok, Name}} <- maps:to_list(Res), is_integer(D), Name =/= <<>>]);
        {error, timeout} ->
            #{}
    end.

remember(D, Node, Dist) ->
    catch ets:insert(?TAB, [{{name, Node}, D}, {{domain_name, D}, Node}, {{tube_dist, Node}, Dist}]),
    {D, Node}.

chunks([], _N) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) -> {A, B} = lists:split(N, L), [A | chunks(B, N)].
