%% @private
%% Node names and domids: each node publishes its Erlang node name at
%% /local/domain/<domid>/name (readable by every domain), and looks others
%% up there. Answers are cached in tube_registry's table; the registry
%% forgets them all when a domain is released. A miss costs one bounded
%% lookup in the calling process, never a wait on the registry.
-module(tube_names).

-export([domid/1, node_of/1]).

-define(TAB, tube_registry).
-define(LOOKUP_TIMEOUT, 1000).

-spec domid(node()) -> {ok, tube:domid()} | {error, not_found}.
domid(Node) ->
    case ets:lookup(?TAB, {name, Node}) of
        [{_, D}] -> {ok, D};
        [] -> lookup(Node)
    end.

-spec node_of(tube:domid()) -> node() | undefined.
node_of(D) ->
    case ets:lookup(?TAB, {domain_name, D}) of
        [{_, Node}] ->
            Node;
        [] ->
            case read_names([D]) of
                #{D := Node} -> Node;
                _ -> undefined
            end
    end.

%% Every registered domain's name, read in one batch after one listing.
lookup(Node) ->
    case tube_registry:conn() of
        {ok, C} ->
            case tube_xs:named(C, [{list, {directory, 0, <<"/local/domain">>}}], ?LOOKUP_TIMEOUT) of
                #{list := {ok, Ids}} ->
                    Domids = [D || Id <- Ids, D <- [catch binary_to_integer(Id)], is_integer(D)],
                    Names = read_names(Domids),
                    case [D || {D, N} <- maps:to_list(Names), N =:= Node] of
                        [D | _] -> {ok, D};
                        [] -> {error, not_found}
                    end;
                _ ->
                    {error, not_found}
            end;
        {error, _} ->
            {error, not_found}
    end.

read_names(Domids) ->
    case tube_registry:conn() of
        {ok, C} ->
            Chunks = chunks(Domids, 200),
            lists:foldl(fun(Chunk, Acc) -> maps:merge(Acc, read_chunk(C, Chunk)) end, #{}, Chunks);
        {error, _} ->
            #{}
    end.

read_chunk(C, Domids) ->
    Batch = [{D, {read, 0, tube_paths:name(D)}} || D <- Domids],
    case tube_xs:named(C, Batch, ?LOOKUP_TIMEOUT) of
        #{} = Res ->
            maps:from_list([remember(D, binary_to_atom(Name)) || {D, {ok, Name}} <- maps:to_list(Res),
                                                                Name =/= <<>>]);
        {error, timeout} ->
            #{}
    end.

remember(D, Node) ->
    ets:insert(?TAB, [{{name, Node}, D}, {{domain_name, D}, Node}]),
    {D, Node}.

chunks([], _N) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) -> {A, B} = lists:split(N, L), [A | chunks(B, N)].
