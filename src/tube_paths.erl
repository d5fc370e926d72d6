%% @private
%% Where a tube lives in Xenstore, and the batches of operations the
%% control plane sends, as lists of `{Name, Op}': their replies are read by
%% name (tube_xs:results/2), never by position. Pure: no process, no I/O.
%%
%% For a tube from domain A (nock, the opener) to domain B (tip, the
%% acceptor) with id T (seed 001):
%%
%%   /local/domain/A/data/nock/B/T        owner A, B may read
%%       tip   = /local/domain/B/data/tip/A/T
%%       state = 2 (InitWait) .. 4 (Connected)
%%   /local/domain/B/data/tip/A/T         owner A, B may read and write
%%       nock  = /local/domain/A/data/nock/B/T
%%       state, tx-ring-ref, rx-ring-ref, event-channel   (created empty
%%       by A in the same transaction, filled in by B)
-module(tube_paths).

-export([domain/1, tip_dir/1, nock_dir/1, name/1, dist/1, nock/3, tip/3, parent/1,
         peer_node/2, own_node/2, token/2, key_of_token/1, parse_tip_event/2,
         state/1, state_name/1, is_domid/1, is_tid/1]).
-export([setup_domain/1, nock_check/3, nock_publish/4, tip_examine/3, tip_fill/3, offer_read/1,
         nock_remove/3, remove_empty/3, tip_remove/3, republish_nock/4,
         publish_name/3, first_error/2, nock_writes_ok/1]).

-include("tube_proto.hrl").
-define(MAX_DOMID, ?TUBE_MAX_DOMID).
-define(MAX_TID, ?TUBE_MAX_TID).

%% ---- paths -----------------------------------------------------------------

domain(D) -> <<"/local/domain/", (integer_to_binary(D))/binary>>.
tip_dir(D) -> <<(domain(D))/binary, "/data/tip">>.
nock_dir(D) -> <<(domain(D))/binary, "/data/nock">>.

%% Xen's own place for a domain's name.
name(D) -> <<(domain(D))/binary, "/name">>.

%% Present (holding "tube") when the node of domain D carries its Erlang
%% distribution on tubes (tube_dist listens): only then do other nodes
%% reach it over a tube. A node that uses tubes but another carrier
%% publishes its name without it.
dist(D) -> <<(domain(D))/binary, "/data/dist">>.

%% On domain Self: the nock entry for a tube to Peer.
nock(Self, Peer, Tid) ->
    <<(nock_dir(Self))/binary, "/", (integer_to_binary(Peer))/binary, "/", (integer_to_binary(Tid))/binary>>.

%% On domain Self: the tip entry for a tube from Peer.
tip(Self, Peer, Tid) ->
    <<(tip_dir(Self))/binary, "/", (integer_to_binary(Peer))/binary, "/", (integer_to_binary(Tid))/binary>>.

parent(Path) ->
    [_ | Rev] = lists:reverse(binary:split(Path, <<"/">>, [global])),
    iolist_to_binary(lists:join(<<"/">>, lists:reverse(Rev))).

%% The directory whose state the other side writes, seen from domain D.
peer_node({nock, Peer, Tid}, D) -> tip(Peer, D, Tid);
peer_node({tip, Peer, Tid}, D) -> nock(Peer, D, Tid).

%% The directory whose state this side writes.
own_node({nock, Peer, Tid}, D) -> nock(D, Peer, Tid);
own_node({tip, Peer, Tid}, D) -> tip(D, Peer, Tid).

%% A tube's watch token: its key and a number of the process, as a closing
%% tube and its successor with the same key may watch the same node (and
%% Xenstore refuses a second watch with the same path and token).
token({Role, Peer, Tid}, N) ->
    iolist_to_binary([atom_to_list(Role), $/, integer_to_list(Peer), $/, integer_to_list(Tid),
                      $/, integer_to_list(N)]).

key_of_token(Token) ->
    case binary:split(Token, <<"/">>, [global]) of
        [Role, P, T, _N] when Role =:= <<"nock">>; Role =:= <<"tip">> ->
            case parse_ids(P, T) of
                {ok, Peer, Tid} -> {ok, {binary_to_atom(Role), Peer, Tid}};
                error -> error
            end;
        _ ->
            error
    end.

%% A path under domain D's data/tip as {ok, Peer, Tid, Below}: Below is
%% the path's part below the entry data/tip/<Peer>/<Tid> (`[]' for the
%% entry itself).
parse_tip_event(Path, D) ->
    Prefix = <<(tip_dir(D))/binary, "/">>,
    N = byte_size(Prefix),
    case Path of
        <<Prefix:N/binary, Rest/binary>> ->
            case binary:split(Rest, <<"/">>, [global]) of
                [P, T | Below] ->
                    case parse_ids(P, T) of
                        {ok, Peer, Tid} -> {ok, Peer, Tid, Below};
                        error -> error
                    end;
                _ ->
                    error
            end;
        _ ->
            error
    end.

parse_ids(P, T) ->
    try {binary_to_integer(P), binary_to_integer(T)} of
        {Peer, Tid} -> case is_domid(Peer) andalso is_tid(Tid) of
                           true -> {ok, Peer, Tid};
                           false -> error
                       end
    catch
        error:badarg -> error
    end.

is_domid(D) -> is_integer(D) andalso D >= 0 andalso D =< ?MAX_DOMID.
is_tid(T) -> is_integer(T) andalso T >= 0 andalso T =< ?MAX_TID.

%% Xenbus states, as seed 001 numbers them.
state(unknown) -> <<"0">>;
state(initialising) -> <<"1">>;
state(initwait) -> <<"2">>;
state(initialised) -> <<"3">>;
state(connected) -> <<"4">>;
state(closing) -> <<"5">>;
state(closed) -> <<"6">>.

state_name(<<"0">>) -> unknown;
state_name(<<"1">>) -> initialising;
state_name(<<"2">>) -> initwait;
state_name(<<"3">>) -> initialised;
state_name(<<"4">>) -> connected;
state_name(<<"5">>) -> closing;
state_name(<<"6">>) -> closed;
state_name(_) -> invalid.

%% ---- batches -----------------------------------------------------------------

%% Own directories: data/tip may be written (not read) by every domain, so
%% peers can create their tip entries; data/nock is private.
setup_domain(D) ->
    [{mk_tip, {mkdir, 0, tip_dir(D)}},
     {tip_perms, {set_perms, 0, tip_dir(D), [{write, D}]}},
     {mk_nock, {mkdir, 0, nock_dir(D)}},
     {watch_tip, {watch, tip_dir(D), <<"tip">>}},
     {watch_release, {watch, <<"@releaseDomain">>, <<"release">>}},
     {watch_introduce, {watch, <<"@introduceDomain">>, <<"introduce">>}}].

%% The node name, readable by every domain, and whether its distribution
%% listens on tubes. The carrier's mark goes first, so that a node that
%% reads the name reads the mark of the same publication with it. A node
%% without the carrier removes a mark its domid may have kept from an
%% earlier node (Xenstore answers ok for a node already absent).
publish_name(D, Name, true) ->
    [{write_dist, {write, 0, dist(D), <<"tube">>}},
     {dist_perms, {set_perms, 0, dist(D), [{read, D}]}}
     | name_ops(D, Name)];
publish_name(D, Name, false) ->
    [{rm_dist, {rm, 0, dist(D)}} | name_ops(D, Name)].

name_ops(D, Name) ->
    [{write_name, {write, 0, name(D), Name}},
     {name_perms, {set_perms, 0, name(D), [{read, D}]}}].

%% A nock's publication takes two round trips. The first starts the
%% transaction and then checks, outside it, that neither directory exists
%% (nock_check/3). The second writes both directories in the transaction
%% and commits it in the same batch (nock_publish/4): the transaction
%% records every node it writes with the generation its snapshot holds, so
%% the commit fails (eagain) if any of them was created or removed by
%% another commit since the transaction started, which covers whatever
%% happened between the start and the checks. The tip's fields are
%% created empty by the nock: a node is owned by its creator, so fields
%% the tip created would be unreadable to the nock. data/tip/<D> is
%% created by the first tube from D and made readable by the tip only; its
%% set_perms fails harmlessly when another domain created it (the tip then
%% rejects the entry anyway), so it is named `parent_perms' and not
%% checked.
%%
%% The peer's data/tip answers `eacces' when it exists (it is not readable
%% by others) and `enoent' while the peer has registered but not yet made
%% it.
nock_check(D, Peer, Tid) ->
    [{tx, transaction_start},
     {nock_state, {read, 0, [nock(D, Peer, Tid), "/state"]}},
     {tip_nock, {read, 0, [tip(Peer, D, Tid), "/nock"]}},
     {peer_tip_dir, {read, 0, tip_dir(Peer)}}].

nock_publish(Tx, D, Peer, Tid) ->
    Nock = nock(D, Peer, Tid),
    Tip = tip(Peer, D, Tid),
    nock_writes(Tx, D, Peer, Nock, Tip, state(initwait)) ++ [{commit, {transaction_end, Tx, true}}].

nock_writes(Tx, D, Peer, Nock, Tip, State) ->
    [{mk_nock, {mkdir, Tx, Nock}},
     {nock_perms, {set_perms, Tx, Nock, [{none, D}, {read, Peer}]}},
     {nock_tip, {write, Tx, [Nock, "/tip"], Tip}},
     {nock_state_w, {write, Tx, [Nock, "/state"], State}},
     {mk_tip, {mkdir, Tx, Tip}},
     {tip_perms, {set_perms, Tx, Tip, [{none, D}, {both, Peer}]}},
     {tip_nock_w, {write, Tx, [Tip, "/nock"], Nock}},
     {tip_state_w, {write, Tx, [Tip, "/state"], state(unknown)}},
     {tip_tx_w, {write, Tx, [Tip, "/tx-ring-ref"], <<>>}},
     {tip_rx_w, {write, Tx, [Tip, "/rx-ring-ref"], <<>>}},
     {tip_evt_w, {write, Tx, [Tip, "/event-channel"], <<>>}},
     {parent_perms, {set_perms, Tx, parent(Tip), [{none, D}, {read, Peer}]}}].

%% The writes of nock_publish/4 that must succeed.
-define(NOCK_WRITES, [mk_nock, nock_perms, nock_tip, nock_state_w, mk_tip, tip_perms,
                      tip_nock_w, tip_state_w, tip_tx_w, tip_rx_w, tip_evt_w]).

%% After a daemon restart: the nock's directories of an open tube, written
%% again (state 4) unless the tip entry exists.
republish_nock(Tx, D, Peer, Tid) ->
    Nock = nock(D, Peer, Tid),
    Tip = tip(Peer, D, Tid),
    [{tip_nock, {read, Tx, [Tip, "/nock"]}} | nock_writes(Tx, D, Peer, Nock, Tip, state(connected))].

%% What the tip checks of a new entry: it names the nock of the domain its
%% path names, that domain owns it, and nobody answered it yet.
tip_examine(D, Peer, Tid) ->
    Tip = tip(D, Peer, Tid),
    [{nock_ref, {read, 0, [Tip, "/nock"]}},
     {perms, {get_perms, 0, Tip}},
     {state, {read, 0, [Tip, "/state"]}}].

%% The tip writes its fields into the nock's directory only while that
%% directory exists (a plain write would create it again, owned by the tip,
%% after the nock removed it): the read makes the transaction fail if it
%% went meanwhile.
tip_fill(Tx, Tip, Fields) ->
    [{nock_ref, {read, Tx, [Tip, "/nock"]}}
     | [{{field, N}, {write, Tx, [Tip, "/", N], V}} || {N, V} <- Fields]].

%% The nock waiting for the ring reads the refs with the state: the tip
%% writes them with state 3 in one transaction.
offer_read(Node) ->
    [{state, {read, 0, [Node, "/state"]}},
     {evt, {read, 0, [Node, "/event-channel"]}},
     {tx_ref, {read, 0, [Node, "/tx-ring-ref"]}},
     {rx_ref, {read, 0, [Node, "/rx-ring-ref"]}}].

%% The nock's own removal: both directories (it owns both). Their parents
%% go too once empty (remove_empty/3).
nock_remove(D, Peer, Tid) ->
    Nock = nock(D, Peer, Tid),
    Tip = tip(Peer, D, Tid),
    [{rm_nock, {rm, 0, Nock}},
     {rm_tip, {rm, 0, Tip}}].

%% The per-peer parents, listed (in transaction Tx, or 0) so that they are
%% removed if empty.
remove_empty(Tx, D, Peer) ->
    [{nock_parent, {directory, Tx, <<(nock_dir(D))/binary, "/", (integer_to_binary(Peer))/binary>>}},
     {tip_parent, {directory, Tx, <<(tip_dir(Peer))/binary, "/", (integer_to_binary(D))/binary>>}}].

%% The tip removes the nock's entry in its data/tip only while it still
%% holds the ring this tip published (the nock may have opened a new tube
%% with the same Tid there): read right after the removing transaction
%% started, removed in it by the caller if equal.
tip_remove(D, Peer, Tid) ->
    [{evt, {read, 0, [tip(D, Peer, Tid), "/event-channel"]}}].

%% The first result among Names that is not `ok' / `{ok, _}', or ok.
first_error(Names, Results) ->
    Bad = [R || N <- Names, R <- [maps:get(N, Results)], R =/= ok, element(1, R) =/= ok],
    case Bad of
        [] -> ok;
        [E | _] -> E
    end.

%% Whether the writes of nock_publish/4 or republish_nock/4 all succeeded.
nock_writes_ok(Results) -> first_error(?NOCK_WRITES, Results).
