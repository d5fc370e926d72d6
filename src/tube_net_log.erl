%% @doc The event log of a test network, and the matching of expected
%% sequences against it. Pure functions; the network's server holds the log.
%%
%% An entry is `{Seq, Time, Event}': `Seq' counts from 1 in the order the
%% server learnt of the events; `Time' is when the event happened, in
%% microseconds since the network started, read where it happened (in the
%% node that saw it, or in the server for the faults it applies) from
%% now/0. Events from one node keep the order that node saw them in;
%% events from different nodes are in the order they reached the server,
%% which their times may contradict by the time a report takes to travel.
%%
%% A pattern is a term where the atom `'_'' matches anything, a fun of
%% arity 1 matches the terms for which it returns `true', tuples and lists
%% match element by element, a map matches a map holding at least its keys
%% with matching values, and any other term matches itself. An expected
%% sequence is a list of patterns and of `{unordered, [Pattern]}' groups;
%% it matches when its elements match entries in order, each later than the
%% one before (other entries may come between), a group's patterns in any
%% order.
-module(tube_net_log).

-export([now/0, new/0, add/3, entries/1, entries_after/2, last_seq/1, match/2, matches/2]).
-export_type([log/0, entry/0, expected/0]).

-record(log, {seq = 0 :: non_neg_integer(), rev = [] :: [entry()]}).

-opaque log() :: #log{}.
-type entry() :: {pos_integer(), integer(), term()}.
-type expected() :: [term() | {unordered, [term()]}].

%% @doc The clock of the log, in microseconds: `os:perf_counter/1', which
%% on Linux reads CLOCK_MONOTONIC, one clock for every process of the
%% machine (`erlang:monotonic_time/1' has an offset of its own in each
%% node), so the times of different nodes compare.
-spec now() -> integer().
now() -> os:perf_counter(microsecond).

-spec new() -> log().
new() -> #log{}.

%% @doc Appends Event stamped with Time; returns the entry and the log.
-spec add(term(), integer(), log()) -> {entry(), log()}.
add(Event, Time, #log{seq = S, rev = Rev}) ->
    E = {S + 1, Time, Event},
    {E, #log{seq = S + 1, rev = [E | Rev]}}.

%% @doc Every entry, oldest first.
-spec entries(log()) -> [entry()].
entries(#log{rev = Rev}) -> lists:reverse(Rev).

%% @doc The entries after sequence number Seq, oldest first.
-spec entries_after(non_neg_integer(), log()) -> [entry()].
entries_after(Seq, #log{rev = Rev}) ->
    lists:reverse(lists:takewhile(fun({S, _, _}) -> S > Seq end, Rev)).

-spec last_seq(log()) -> non_neg_integer().
last_seq(#log{seq = S}) -> S.

%% @doc Matches Expected against Entries (oldest first). `{ok, Seq}' when
%% all of it matched, Seq being the last entry used; `{more, Left}' with
%% the part not matched yet (a group keeps only its unmatched patterns).
-spec match(expected(), [entry()]) -> {ok, non_neg_integer()} | {more, expected()}.
match(Expected, Entries) ->
    match(Expected, Entries, 0).

match([], _Entries, Last) ->
    {ok, Last};
match([{unordered, []} | Rest], Entries, Last) ->
    match(Rest, Entries, Last);
match([{unordered, Ps} | Rest], Entries, Last) ->
    case group(Ps, Entries, Last) of
        {ok, Last1, Entries1} -> match(Rest, Entries1, Last1);
        {more, Left} -> {more, [{unordered, Left} | Rest]}
    end;
match([P | Rest] = Expected, Entries, Last) ->
    case lists:dropwhile(fun({_, _, E}) -> not matches(P, E) end, Entries) of
        [] -> {more, Expected};
        [{S, _, _} | Entries1] -> match(Rest, Entries1, max(Last, S))
    end.

%% Each entry takes the first pattern of the group it matches.
group([], Entries, Last) ->
    {ok, Last, Entries};
group(Ps, [], _Last) ->
    {more, Ps};
group(Ps, [{S, _, E} | Entries], Last) ->
    case take_first(fun(P) -> matches(P, E) end, Ps) of
        {ok, Ps1} -> group(Ps1, Entries, max(Last, S));
        error -> group(Ps, Entries, Last)
    end.

take_first(F, L) -> take_first(F, L, []).

take_first(_F, [], _Acc) -> error;
take_first(F, [X | Xs], Acc) ->
    case F(X) of
        true -> {ok, lists:reverse(Acc, Xs)};
        false -> take_first(F, Xs, [X | Acc])
    end.

%% @doc Whether Term matches Pattern.
-spec matches(term(), term()) -> boolean().
matches('_', _) -> true;
matches(F, T) when is_function(F, 1) -> F(T) =:= true;
matches(P, T) when is_tuple(P), is_tuple(T), tuple_size(P) =:= tuple_size(T) ->
    matches(tuple_to_list(P), tuple_to_list(T));
matches([P | Ps], [T | Ts]) -> matches(P, T) andalso matches(Ps, Ts);
matches(P, T) when is_map(P), is_map(T) ->
    maps:fold(fun(K, V, Acc) ->
                      Acc andalso maps:is_key(K, T) andalso matches(V, maps:get(K, T))
              end, true, P);
matches(P, T) -> P =:= T.
