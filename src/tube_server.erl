%% @private
%% The node's tube control plane: one process that owns the Xenstore
%% connection, registers the node as a domain and runs every handshake of
%% seed 001 (nock/tip directories, states 1..4, refs in one transaction,
%% watches on the peer's state).
%%
%% For a tube from domain A (nock, the opener) to domain B (tip, the
%% acceptor) with id T:
%%
%%   /local/domain/A/data/nock/B/T        owner A, B may read
%%       tip   = /local/domain/B/data/tip/A/T
%%       state = 2 (InitWait) .. 4 (Connected)
%%   /local/domain/B/data/tip/A/T         owner A, B may read and write
%%       nock  = /local/domain/A/data/nock/B/T
%%       state, tx-ring-ref, rx-ring-ref, event-channel   (created empty
%%       by A in the same transaction, filled in by B)
%%
%% The nock publishes both directories in one transaction and watches the
%% tip's. The tip sees `nock' appear under its own `data/tip' watch, checks
%% the directory is owned by the domain its path names, answers state 1 and
%% watches the nock's state. When an accept() takes the tube, the tip
%% creates the ring and writes the refs, the event channel and state 3 in
%% one transaction; the nock maps the ring, opens its port and writes 4;
%% the tip answers 4. Ports are monitored: when one goes away its nodes are
%% removed, which the peer sees through its watch.
-module(tube_server).
-behaviour(gen_server).

-export([start_link/0, open/3, accept/1, accept/2, attach/2, abort/1, close/1,
         lookup/1, domid/0, tubes/0, publish_name/1, domid_of/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-include_lib("kernel/include/logger.hrl").

-define(STATE_UNKNOWN, <<"0">>).
-define(STATE_INITIALISING, <<"1">>).
-define(STATE_INITWAIT, <<"2">>).
-define(STATE_INITIALISED, <<"3">>).
-define(STATE_CONNECTED, <<"4">>).
-define(RECONNECT_MS, 250).
-define(TUBE_CTL_CLOSE, 2).

-record(tube, {
    key,              % {nock | tip, Peer, Tid}
    phase,            % waiting | connecting | handed | open
    from,             % caller waiting for the result (waiting/connecting)
    caller_mon,       % monitor of the caller until it attaches a port
    timer,            % open/accept deadline
    id,               % hand-over number while phase = handed
    port,
    port_mon,
    refs,             % tip: {EventChannel, TxRef, RxRef} as published
    deadline          % tip: the accept() deadline, to wait again on failure
}).

-record(st, {
    conn,             % tube_xs connection, undefined while disconnected
    tag,              % marks this connection's messages
    domid,
    tubes = #{},      % Key -> #tube{}
    mons = #{},       % monitor ref -> {port | caller | acceptor, Key | From}
    acceptors = [],   % [{From, Mon, TimerRef, Deadline}], oldest first
    backlog = [],     % incoming tip keys waiting for an accept, oldest first
    live_peers = sets:new(), % peers seen registered on this connection
    name                     % the Erlang node name published for this domain
}).

%% Node name -> domid of the nodes seen in Xenstore (read without a call).
-define(NAMES, tube_node_names).
%% Tids a plain accept takes: the top 65536 are the distribution carrier's.
-define(PLAIN_TIDS, {0, 16#FFFEFFFF}).

%% ---- API -----------------------------------------------------------------

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

domid() -> gen_server:call(?MODULE, domid).

%% Returns {ok, HandoffId, Key} once the ring is mapped; the caller opens the
%% port and attaches it.
open(Peer, Tid, Timeout) ->
    gen_server:call(?MODULE, {open, Peer, Tid, Timeout}, infinity).

accept(Timeout) ->
    accept(Timeout, ?PLAIN_TIDS).

%% Takes only a tube whose Tid is in Tids, {Min, Max} inclusive.
accept(Timeout, Tids) ->
    gen_server:call(?MODULE, {accept, Timeout, Tids}, infinity).

%% Publishes Node as this domain's name, at /local/domain/<domid>/name,
%% readable by every domain (and again after a reconnection).
publish_name(Node) when is_atom(Node) ->
    gen_server:call(?MODULE, {publish_name, Node}).

%% The domain of a node seen in Xenstore: from the cache when known, else
%% after one read of the domains' names.
domid_of(Node) when is_atom(Node) ->
    case catch ets:lookup(?NAMES, Node) of
        [{_, D}] -> {ok, D};
        _ ->
            case catch gen_server:call(?MODULE, {domid_of, Node}, 5000) of
                {ok, D} -> {ok, D};
                _ -> {error, not_found}
            end
    end.

attach(Key, Port) -> gen_server:call(?MODULE, {attach, Key, Port}).

abort(Key) -> gen_server:call(?MODULE, {abort, Key}).

close(Port) -> gen_server:call(?MODULE, {close, Port}).

lookup(Port) -> gen_server:call(?MODULE, {lookup, Port}).

tubes() -> gen_server:call(?MODULE, tubes).

%% ---- start-up ------------------------------------------------------------

init([]) ->
    process_flag(trap_exit, true),
    _ = ets:new(?NAMES, [named_table, protected, {read_concurrency, true}]),
    Tag = erlang:unique_integer([positive]),
    case connect(#st{tag = Tag}) of
        {ok, St} -> {ok, St};
        {error, Reason} -> {stop, Reason}
    end.

connect(St = #st{tag = Tag}) ->
    case tube_daemon:connect(Tag) of
        {ok, Conn} ->
            case register_domain(Conn, St#st.domid) of
                {ok, Domid} ->
                    St1 = St#st{conn = Conn, domid = Domid},
                    case setup_domain(St1) of
                        ok -> _ = write_name(St1), {ok, St1};
                        E -> tube_xs:close(Conn), E
                    end;
                E ->
                    tube_xs:close(Conn),
                    E
            end;
        E ->
            E
    end.

%% The domid is kept across reconnections; the first time it comes from the
%% application env `domid' (an integer, or `auto').
register_domain(Conn, undefined) ->
    Want = application:get_env(tube, domid, auto),
    case valid_domid_config(Want) of
        true -> introduce(Conn, Want);
        false -> {error, {bad_config, {domid, Want}}}
    end;
register_domain(Conn, Domid) ->
    introduce(Conn, Domid).

valid_domid_config(auto) -> true;
valid_domid_config(D) -> is_integer(D) andalso D >= 1 andalso D < 16#7FF0.

introduce(Conn, Want) ->
    case tube_xs:introduce_self(Conn, Want) of
        {ok, D} ->
            {ok, D};
        {error, eexist} ->
            {error, {domid_in_use, Want}};
        {error, R} when is_integer(Want), (R =:= einval orelse R =:= enosys orelse R =:= eacces) ->
            %% A Xenstore without tube's local-domain extension (Xen's own
            %% xenstored): use the configured domid on this connection as
            %% it is, with the rights the daemon gives it.
            ?LOG_NOTICE("tube: Xenstore has no local domains (~p); using domid ~p as configured", [R, Want]),
            {ok, Want};
        {error, R} ->
            {error, {introduce, R}}
    end.

%% Own directories: data/tip may be written (not read) by every domain, so
%% peers can create their tip entries; data/nock is private.
setup_domain(#st{conn = C, domid = D}) ->
    Tip = tip_dir(D),
    Steps = [
        fun() -> tube_xs:mkdir(C, Tip) end,
        fun() -> tube_xs:set_perms(C, Tip, [{write, D}]) end,
        fun() -> tube_xs:mkdir(C, nock_dir(D)) end,
        fun() -> tube_xs:watch(C, Tip, <<"tip">>) end,
        fun() -> tube_xs:watch(C, <<"@releaseDomain">>, <<"release">>) end,
        fun() -> tube_xs:watch(C, <<"@introduceDomain">>, <<"introduce">>) end
    ],
    run_steps(Steps).

run_steps([]) -> ok;
run_steps([F | Rest]) ->
    case F() of
        ok -> run_steps(Rest);
        E -> E
    end.

%% ---- calls ---------------------------------------------------------------

handle_call(domid, _From, St) ->
    {reply, St#st.domid, St};
handle_call(tubes, _From, St) ->
    {reply, [describe(T) || T <- maps:values(St#st.tubes)], St};
handle_call(_Req, _From, St = #st{conn = undefined}) ->
    {reply, {error, xenstore_down}, St};
handle_call({open, Peer, Tid, Timeout}, From, St) ->
    %% A connection that died under us reads as `closed' until its end is
    %% processed: the caller is told the daemon is down either way.
    case do_open(Peer, Tid, Timeout, From, St) of
        {reply, {error, closed}, St1} -> {reply, {error, xenstore_down}, St1};
        Other -> Other
    end;
handle_call({accept, Timeout, Tids}, From, St) ->
    do_accept(From, Timeout, Tids, St);
handle_call({publish_name, Node}, _From, St) ->
    St1 = St#st{name = Node},
    {reply, write_name(St1), St1};
handle_call({domid_of, Node}, _From, St) ->
    {reply, find_name(Node, St), St};
handle_call({attach, Key, Port}, From, St) ->
    do_attach(Key, Port, From, St);
handle_call({abort, Key}, _From, St) ->
    {reply, ok, drop(Key, St)};
handle_call({close, Port}, _From, St) ->
    case find_port(Port, St) of
        {ok, Key} ->
            catch erlang:port_close(Port),
            {reply, ok, drop(Key, St)};
        error ->
            {reply, {error, closed}, St}
    end;
handle_call({lookup, Port}, _From, St) ->
    case find_port(Port, St) of
        {ok, Key} -> {reply, {ok, describe(maps:get(Key, St#st.tubes))}, St};
        error -> {reply, {error, closed}, St}
    end.

handle_cast(_Msg, St) ->
    {noreply, St}.

%% ---- open (nock side) ----------------------------------------------------

do_open(Peer, _Tid, _Timeout, _From, St = #st{domid = Peer}) ->
    {reply, {error, self}, St};
do_open(Peer, Tid, Timeout, From, St = #st{conn = C, domid = D}) ->
    Key = {nock, Peer, Tid},
    case maps:is_key(Key, St#st.tubes) of
        true ->
            {reply, {error, tid_in_use}, St};
        false ->
            %% The transaction that publishes the nock starts in the same
            %% round trip as the check that the peer exists.
            case tube_xs:batch(C, [{is_domain_introduced, Peer}, transaction_start]) of
                [{ok, true}, Started] ->
                    case publish_nock(C, Started, D, Peer, Tid) of
                        ok -> start_open(Key, Timeout, From, St);
                        {error, eexist} -> {reply, {error, tid_in_use}, St};
                        {error, eacces} -> {reply, {error, tid_in_use}, St};
                        E -> {reply, E, St}
                    end;
                [Introduced, Started] ->
                    abort_tx(C, Started),
                    {reply, case Introduced of {ok, false} -> {error, no_domain}; E -> E end, St}
            end
    end.

start_open(Key = {nock, Peer, Tid}, Timeout, From = {Pid, _}, St) ->
    Mon = erlang:monitor(process, Pid),
    Timer = start_timer(Timeout, Key),
    T = #tube{key = Key, phase = waiting, from = From, caller_mon = Mon, timer = Timer},
    St1 = St#st{tubes = maps:put(Key, T, St#st.tubes),
                mons = maps:put(Mon, {caller, Key}, St#st.mons)},
    _ = Peer, _ = Tid,
    case watch_peer(Key, St1) of
        ok -> {noreply, St1};
        %% Over the daemon's watch quota (or it went away): give up cleanly.
        {error, R} -> {noreply, fail(Key, {error, {xenstore, R}}, St1)}
    end.

%% Both directories of the nock, in one transaction so that the tip never
%% sees half of them, and in one round trip: the batch checks that neither
%% exists yet, and the transaction is dropped if one does.
publish_nock(C, Started, D, Peer, Tid) ->
    Nock = nock_path(D, Peer, Tid),
    Tip = tip_path(Peer, D, Tid),
    tube_xs:transaction(C, Started, fun(Tx) ->
        Checks = [{read, Tx, [Nock, "/state"]}, {read, Tx, [Tip, "/nock"]}],
        Writes = nock_ops(Tx, D, Peer, Nock, Tip),
        case tube_xs:batch(C, Checks ++ Writes) of
            [{error, enoent}, {error, enoent} | Results] -> all_ok(Results);
            [{ok, _}, _ | _] -> {error, eexist};
            [_, {ok, _} | _] -> {error, eexist};
            [{error, _} = E, _ | _] -> E;
            [_, E | _] -> E
        end
    end).

%% Writes a transaction's worth of ops in one round trip.
write_nock(C, Tx, D, Peer, Nock, Tip) ->
    all_ok(tube_xs:batch(C, nock_ops(Tx, D, Peer, Nock, Tip))).

%% The nock's nodes. data/tip/<D> is created by the first tube from D: it is
%% made readable by the tip only (failing harmlessly if another domain
%% created it, in which case the tip rejects our entry anyway).
nock_ops(Tx, D, Peer, Nock, Tip) ->
    [{mkdir, Tx, Nock},
     {set_perms, Tx, Nock, [{none, D}, {read, Peer}]},
     {write, Tx, [Nock, "/tip"], Tip},
     {write, Tx, [Nock, "/state"], ?STATE_INITWAIT},
     {mkdir, Tx, Tip},
     {set_perms, Tx, Tip, [{none, D}, {both, Peer}]},
     {write, Tx, [Tip, "/nock"], Nock}]
    ++ [{write, Tx, [Tip, Name], Value} || {Name, Value} <- tip_fields()]
    ++ [{set_perms, Tx, parent(Tip), [{none, D}, {read, Peer}]}].

all_ok(Results) ->
    %% The parent's set_perms (last) may fail without harm, see nock_ops/5.
    case [R || R <- lists:droplast(Results), R =/= ok] of
        [] -> ok;
        [E | _] -> E
    end.

%% The nodes the tip fills in, created empty by the nock: a node inherits
%% its parent's permissions but is owned by its creator, so nodes the tip
%% created itself would be unreadable to the nock. Created here, they stay
%% the nock's, readable and writable by both, and go with the nock's domain.
tip_fields() ->
    [{"/state", ?STATE_UNKNOWN}, {"/tx-ring-ref", <<>>}, {"/rx-ring-ref", <<>>},
     {"/event-channel", <<>>}].


%% ---- accept (tip side) ---------------------------------------------------

%% An acceptor's "deadline" is {Deadline, Tids}: the Tids it takes travel
%% with it when it is queued again.
do_accept(From = {Pid, _}, Timeout, Tids, St) ->
    Mon = erlang:monitor(process, Pid),
    Deadline = case Timeout of
                   infinity -> infinity;
                   Ms -> erlang:monotonic_time(millisecond) + Ms
               end,
    {noreply, enqueue_acceptor(From, Mon, {Deadline, Tids}, St)}.

%% Queues an accept() caller until Deadline (also used to put one back when
%% the tube it was given failed before it was handed over).
enqueue_acceptor(From, Mon, Deadline = {Dl, _Tids}, St) ->
    Left = case Dl of
               infinity -> infinity;
               _ -> Dl - erlang:monotonic_time(millisecond)
           end,
    case Left of
        L when is_integer(L), L =< 0 ->
            fail_caller(From, Mon, {error, timeout}, St);
        _ ->
            Timer = start_timer(Left, {acceptor, Mon}),
            St1 = St#st{acceptors = St#st.acceptors ++ [{From, Mon, Timer, Deadline}],
                        mons = maps:put(Mon, {acceptor, From}, St#st.mons)},
            match_accept(St1)
    end.

%% Pairs waiting accept() calls with incoming tubes of their Tids, oldest
%% first.
match_accept(St = #st{acceptors = As, backlog = Ks}) ->
    case find_pair(As, Ks) of
        {ok, A = {From, Mon, Timer, Deadline}, Key} ->
            cancel_timer(Timer),
            St1 = St#st{acceptors = lists:delete(A, As), backlog = lists:delete(Key, Ks),
                        mons = maps:remove(Mon, St#st.mons)},
            match_accept(offer(Key, From, Mon, Deadline, tube_xs:transaction_start(St#st.conn), St1));
        none ->
            St
    end.

find_pair([], _Keys) ->
    none;
find_pair([A = {_, _, _, {_, {Min, Max}}} | As], Keys) ->
    case [K || K = {tip, _, Tid} <- Keys, Tid >= Min, Tid =< Max] of
        [K | _] -> {ok, A, K};
        [] -> find_pair(As, Keys)
    end.

%% Creates the ring and publishes its refs with state 3 in one transaction
%% (Started, already begun), then waits for the nock to map it, off this
%% process.
offer(Key = {tip, Peer, Tid}, From, Mon, Deadline, Started, St = #st{conn = C, domid = D}) ->
    T0 = maps:get(Key, St#st.tubes),
    Tip = tip_path(D, Peer, Tid),
    case tube_nif:ring_offer() of
        {ok, Offer, Evt, TxRef, RxRef} ->
            Res = fill_tip(C, Started, Tip, [{"/tx-ring-ref", TxRef}, {"/rx-ring-ref", RxRef},
                                    {"/event-channel", Evt}, {"/state", ?STATE_INITIALISED}]),
            case Res of
                ok ->
                    Timeout = application:get_env(tube, open_timeout, 5000),
                    spawn_ring_job(Key, fun() -> tube_nif:ring_accept(Offer, Timeout) end),
                    T = T0#tube{phase = connecting, from = From, caller_mon = Mon,
                                refs = {Evt, TxRef, RxRef}, deadline = Deadline},
                    St#st{tubes = maps:put(Key, T, St#st.tubes),
                          mons = maps:put(Mon, {caller, Key}, St#st.mons)};
                _ ->
                    enqueue_acceptor(From, Mon, Deadline, drop(Key, St))
            end;
        _ ->
            abort_tx(C, Started),
            enqueue_acceptor(From, Mon, Deadline, drop(Key, St))
    end.

%% The tip writes its fields into the nock's directory in one transaction,
%% and only while that directory exists: a plain write would create it
%% again (owned by the tip) after the nock removed it.
fill_tip(C, Started, Tip, Fields) ->
    tube_xs:transaction(C, Started, fun(Tx) ->
        Ops = [{read, Tx, [Tip, "/nock"]} | [{write, Tx, [Tip, N], V} || {N, V} <- Fields]],
        case tube_xs:batch(C, Ops) of
            [{ok, _} | Writes] ->
                case [W || W <- Writes, W =/= ok] of
                    [] -> ok;
                    [E | _] -> E
                end;
            [{error, enoent} | _] -> {error, peer_closed};
            [E | _] -> E
        end
    end).

fail_caller(From, Mon, Reply, St) ->
    erlang:demonitor(Mon, [flush]),
    gen_server:reply(From, Reply),
    St.

%% A tip entry appeared or changed under our data/tip.
incoming(Path, St = #st{domid = D}) ->
    case parse_tip_event(Path, D) of
        {ok, Peer, Tid} ->
            Key = {tip, Peer, Tid},
            case maps:is_key(Key, St#st.tubes) of
                true -> St;
                false -> examine_tip(Key, [watch_op(Key, D), transaction_start], St)
            end;
        error ->
            St
    end.

%% Checks a tip entry and takes it if it is a new tube from the domain its
%% path names. Extra ops ride in the same round trip: for an entry just
%% seen, the watch on the nock's state and the transaction that answers
%% it, since nearly every such entry is a new tube; they are undone if not.
examine_tip(Key = {tip, Peer, Tid}, Extra, St = #st{conn = C, domid = D}) ->
    Tip = tip_path(D, Peer, Tid),
    Expected = nock_path(Peer, D, Tid),
    Checks = [{read, 0, [Tip, "/nock"]}, {get_perms, 0, Tip}, {read, 0, [Tip, "/state"]}],
    case tube_xs:batch(C, Checks ++ Extra) of
        [{ok, Expected}, {ok, [{_, Peer} | _]}, {ok, ?STATE_UNKNOWN} | Taken] ->
            take_tip(Key, Tip, Taken, St);
        [{ok, Expected}, {ok, [{_, Peer} | _]}, _ | Taken] ->
            release_tip(Key, Taken, St); % incomplete, or answered by a previous run of this node
        [{ok, _}, {ok, [{_, Owner} | _]}, _ | Taken] when Owner =/= Peer ->
            ?LOG_WARNING("tube: ignoring ~s: owned by domain ~p, not ~p", [Tip, Owner, Peer]),
            release_tip(Key, Taken, St);
        [_, _, _ | Taken] ->
            release_tip(Key, Taken, St)
    end.

take_tip(Key, Tip, [], St = #st{conn = C, domid = D}) ->
    take_tip(Key, Tip, tube_xs:batch(C, [watch_op(Key, D), transaction_start]), St);
take_tip(Key, Tip, [ok, {ok, _} = Started], St) ->
    new_tip(Key, Tip, Started, St);
take_tip(Key, _Tip, Taken, St) ->
    release_tip(Key, Taken, St). % over the watch quota, or the daemon went away

%% Undoes the extra ops of examine_tip/3 for an entry not taken.
release_tip(Key, Taken, St = #st{conn = C, domid = D}) ->
    _ = tube_xs:batch(C, undo_ops(Key, D, Taken)),
    St.

undo_ops(_Key, _D, []) ->
    [];
undo_ops(Key, D, [Watched, Started]) ->
    [{unwatch, peer_node(Key, D), token(Key)} || Watched =:= ok]
    ++ [{transaction_end, Tx, false} || {ok, Tx} <- [Started]].

%% A new incoming tube, watched: answer state 1 and wait for an accept(),
%% or, when one is already waiting, go straight to publishing the ring
%% (state 3), in the transaction already started.
new_tip(Key, Tip, Started, St = #st{conn = C}) ->
    St1 = put_tube(#tube{key = Key, phase = waiting}, St),
    case {find_pair(St#st.acceptors, [Key]), St#st.backlog} of
        {{ok, A = {From, Mon, Timer, Deadline}, _}, []} ->
            cancel_timer(Timer),
            offer(Key, From, Mon, Deadline, Started,
                  St1#st{acceptors = lists:delete(A, St#st.acceptors),
                         mons = maps:remove(Mon, St1#st.mons)});
        _ ->
            case fill_tip(C, Started, Tip, [{"/state", ?STATE_INITIALISING}]) of
                ok ->
                    match_accept(St1#st{backlog = St1#st.backlog ++ [Key]});
                {error, _} ->
                    unwatch_peer(Key, St),
                    St
            end
    end.

parse_tip_event(Path, D) ->
    Prefix = <<(tip_dir(D))/binary, "/">>,
    N = byte_size(Prefix),
    case Path of
        <<Prefix:N/binary, Rest/binary>> ->
            case binary:split(Rest, <<"/">>, [global]) of
                [P, T | _] -> parse_ids(P, T);
                _ -> error
            end;
        _ ->
            error
    end.

parse_ids(P, T) ->
    try {binary_to_integer(P), binary_to_integer(T)} of
        {Peer, Tid} when Peer >= 0, Peer =< 16#7FEF, Tid >= 0, Tid =< 16#FFFFFFFF -> {ok, Peer, Tid};
        _ -> error
    catch
        error:badarg -> error
    end.

%% ---- following the peer's state -----------------------------------------

watch_peer(Key, #st{conn = C, domid = D}) ->
    case tube_xs:watch(C, peer_node(Key, D), token(Key)) of
        ok -> ok;
        {error, _} = E -> E
    end.

watch_op(Key, D) ->
    {watch, peer_node(Key, D), token(Key)}.

unwatch_peer(Key, #st{conn = C, domid = D}) when C =/= undefined ->
    _ = tube_xs:unwatch(C, peer_node(Key, D), token(Key)),
    ok;
unwatch_peer(_Key, _St) ->
    ok.

%% The directory whose state the other side writes.
peer_node({nock, Peer, Tid}, D) -> tip_path(Peer, D, Tid);
peer_node({tip, Peer, Tid}, D) -> nock_path(Peer, D, Tid).

token({Role, Peer, Tid}) ->
    iolist_to_binary([atom_to_list(Role), $/, integer_to_list(Peer), $/, integer_to_list(Tid)]).

key_of_token(Token) ->
    case binary:split(Token, <<"/">>, [global]) of
        [Role, P, T] when Role =:= <<"nock">>; Role =:= <<"tip">> ->
            case parse_ids(P, T) of
                {ok, Peer, Tid} -> {ok, {binary_to_atom(Role), Peer, Tid}};
                error -> error
            end;
        _ ->
            error
    end.

%% Re-reads the peer's state after a watch event and moves the tube on.
check(Key, St = #st{conn = C, domid = D}) ->
    Node = peer_node(Key, D),
    case maps:find(Key, St#st.tubes) of
        {ok, T = #tube{key = {nock, _, _}, phase = waiting}} ->
            check_offer(Key, T, Node, St);
        {ok, T} ->
            step(Key, T, tube_xs:read(C, [Node, "/state"]), Node, St);
        error ->
            St
    end.

%% Nock waiting for the ring: the refs are read with the state, in the same
%% round trip, as they are written with state 3 in one transaction.
check_offer(Key, T, Node, St = #st{conn = C}) ->
    Fields = ["/state", "/event-channel", "/tx-ring-ref", "/rx-ring-ref"],
    case tube_xs:batch(C, [{read, 0, [Node, F]} || F <- Fields]) of
        [{ok, ?STATE_INITIALISED}, {ok, Evt}, {ok, TxRef}, {ok, RxRef}] ->
            Timeout = application:get_env(tube, open_timeout, 5000),
            spawn_ring_job(Key, connect_job(Evt, TxRef, RxRef, Timeout)),
            put_tube(T#tube{phase = connecting}, St);
        [{ok, ?STATE_INITIALISED} | _] ->
            fail(Key, {error, bad_peer_state}, St);
        [State | _] ->
            step(Key, T, State, Node, St)
    end.

%% The grant is presented from here, so that the tip answers while the job
%% that waits for its ring is being started; if that cannot be done without
%% waiting, the job does the whole connect.
connect_job(Evt, TxRef, RxRef, Timeout) ->
    case tube_nif:ring_connect_start(Evt, TxRef, RxRef) of
        {ok, Connecting} -> fun() -> tube_nif:ring_connect_finish(Connecting, Timeout) end;
        {error, _} -> fun() -> tube_nif:ring_connect(Evt, TxRef, RxRef, Timeout) end
    end.

%% Nock: the tip directory was removed before we connected.
step(Key = {nock, _, _}, #tube{phase = waiting}, {error, enoent}, Node, St) ->
    case tube_xs:read(St#st.conn, [Node, "/nock"]) of
        {ok, _} -> St; % created by us, the tip has not answered yet
        _ -> fail(Key, {error, peer_closed}, St)
    end;
%% Tip: the nock is connected; answer once our port is attached. After a
%% daemon restart the nock publishes the directory again, empty: fill it
%% in again too.
step(Key = {tip, Peer, Tid}, #tube{phase = open, refs = {Evt, TxRef, RxRef}}, {ok, ?STATE_CONNECTED}, _Node, St) ->
    C = St#st.conn,
    Tip = tip_path(St#st.domid, Peer, Tid),
    case tube_xs:read(C, [Tip, "/state"]) of
        {ok, ?STATE_CONNECTED} ->
            St;
        _ ->
            _ = fill_tip(C, tube_xs:transaction_start(C), Tip,
                         [{"/tx-ring-ref", TxRef}, {"/rx-ring-ref", RxRef},
                          {"/event-channel", Evt}, {"/state", ?STATE_CONNECTED}]),
            _ = Key,
            St
    end;
%% An open tube whose peer nodes are gone: the ring's hang-up is what tells
%% a closed peer, so this only closes the tube if the peer's domain is gone
%% too (its nodes are also missing for a moment after a daemon restart).
step(_Key, #tube{phase = open}, {error, enoent}, _Node, St) ->
    domains_changed(St);
%% Before the ring is set up: the peer's nodes are gone, it has left.
step(Key, #tube{phase = waiting}, {error, enoent}, _Node, St) ->
    peer_gone(Key, peer_closed, St);
%% While the ring is being connected or handed over, the ring's own outcome
%% (a hang-up, a timeout) decides.
step(_Key, _T, {error, enoent}, _Node, St) ->
    St;
step(Key, _T, {ok, S}, _Node, St) when S =:= <<"5">>; S =:= <<"6">> ->
    peer_gone(Key, peer_closed, St);
step(_Key, _T, _State, _Node, St) ->
    St.

%% The peer went away: an open port is told to close (its owner gets
%% {tube_closed, Port, Reason} from the driver); a handshake in progress
%% fails.
peer_gone(Key, Reason, St) ->
    case maps:find(Key, St#st.tubes) of
        {ok, #tube{phase = open, port = Port}} ->
            catch erlang:port_control(Port, ?TUBE_CTL_CLOSE, atom_to_list(Reason)),
            St;
        {ok, #tube{phase = handed}} ->
            St; % the caller attaches or aborts soon; the ring reports it
        {ok, _} ->
            fail(Key, {error, Reason}, St);
        error ->
            St
    end.

%% Domains came or went: close the tubes to domains that are gone.
%%
%% A peer counts as gone only if it was seen registered on the current
%% connection and is not any more: right after a daemon restart peers have
%% not registered again yet, and their tubes must survive that. A peer that
%% really died meanwhile is seen by the ring's hang-up.
domains_changed(St = #st{conn = C}) ->
    Peers = lists:usort([P || {_, P, _} <- maps:keys(St#st.tubes)]),
    {Gone, Live} = lists:foldl(
                     fun(P, {G, L}) ->
                             case tube_xs:is_domain_introduced(C, P) of
                                 {ok, true} -> {G, sets:add_element(P, L)};
                                 {ok, false} ->
                                     case sets:is_element(P, L) of
                                         true -> {[P | G], sets:del_element(P, L)};
                                         false -> {G, L}
                                     end;
                                 _ -> {G, L}
                             end
                     end, {[], St#st.live_peers}, Peers),
    lists:foldl(fun(Key = {_, P, _}, Acc) ->
                        case lists:member(P, Gone) of
                            true -> peer_gone(Key, peer_down, Acc);
                            false -> Acc
                        end
                end, St#st{live_peers = Live}, maps:keys(St#st.tubes)).

%% ---- ring jobs and ports -------------------------------------------------

%% Runs a blocking ring call (dirty NIF) in its own process and reports
%% {ring_done, Key, Result} back.
spawn_ring_job(Key, Fun) ->
    Self = self(),
    spawn_link(fun() ->
        Result = try Fun() catch C:R -> {error, {C, R}} end,
        Self ! {ring_done, Key, Result}
    end).

ring_done(Key, Result, St) ->
    case maps:find(Key, St#st.tubes) of
        {ok, T = #tube{phase = connecting, from = From}} ->
            case Result of
                {ok, TubeRes} ->
                    {ok, Id} = tube_nif:ring_handoff(TubeRes),
                    cancel_timer(T#tube.timer),
                    gen_server:reply(From, {ok, Id, Key}),
                    put_tube(T#tube{phase = handed, id = Id, from = undefined, timer = undefined}, St);
                {error, R} ->
                    fail(Key, {error, R}, St)
            end;
        _ ->
            St % timed out or dropped meanwhile; the ring resource is freed by GC
    end.

%% The caller has its tube once the port is attached, so it is answered
%% first; the store learns of it (state 4, the peer's state read again)
%% before this process handles anything else.
do_attach(Key, Port, From, St) ->
    case maps:find(Key, St#st.tubes) of
        {ok, T = #tube{phase = handed}} ->
            erlang:demonitor(T#tube.caller_mon, [flush]),
            Mon = erlang:monitor(port, Port),
            T1 = T#tube{phase = open, port = Port, port_mon = Mon, caller_mon = undefined, id = undefined},
            St1 = put_tube(T1, St#st{mons = maps:put(Mon, {port, Key},
                                                    maps:remove(T#tube.caller_mon, St#st.mons))}),
            {_, Peer, _} = Key,
            gen_server:reply(From, ok),
            St2 = announce_connected(Key, St1#st{live_peers = sets:add_element(Peer, St1#st.live_peers)}),
            {noreply, check(Key, St2)};
        _ ->
            {reply, {error, closed}, St}
    end.

announce_connected({nock, Peer, Tid}, St = #st{conn = C, domid = D}) ->
    _ = tube_xs:write(C, [nock_path(D, Peer, Tid), "/state"], ?STATE_CONNECTED),
    St;
announce_connected({tip, _, _}, St) ->
    St.

find_port(Port, St) ->
    case [K || {K, #tube{port = P}} <- maps:to_list(St#st.tubes), P =:= Port] of
        [Key] -> {ok, Key};
        [] -> error
    end.

describe(#tube{key = {Role, Peer, Tid}, phase = Phase, port = Port}) ->
    #{role => Role, peer => Peer, tid => Tid, port => Port,
      state => case Phase of open -> connected; P -> P end}.

%% ---- failing and dropping tubes -----------------------------------------

%% Replies Reply to a caller still waiting, then drops the tube. An accept()
%% whose tube failed before it was handed over waits for the next one
%% instead, unless the daemon is gone.
fail(Key, Reply, St) ->
    case maps:find(Key, St#st.tubes) of
        {ok, T = #tube{key = {tip, _, _}, from = From, caller_mon = Mon, deadline = Deadline}}
          when From =/= undefined, Reply =/= {error, xenstore_down} ->
            St1 = put_tube(T#tube{from = undefined, caller_mon = undefined},
                           St#st{mons = maps:remove(Mon, St#st.mons)}),
            enqueue_acceptor(From, Mon, Deadline, drop(Key, St1));
        {ok, #tube{from = From}} when From =/= undefined ->
            gen_server:reply(From, Reply),
            drop(Key, St);
        _ ->
            drop(Key, St)
    end.

%% Forgets a tube and removes the nodes this side may remove.
drop(Key, St) ->
    case maps:take(Key, St#st.tubes) of
        {T, Tubes} ->
            cancel_timer(T#tube.timer),
            Mons = lists:foldl(fun(undefined, M) -> M;
                                  (Mon, M) -> erlang:demonitor(Mon, [flush]), maps:remove(Mon, M)
                               end, St#st.mons, [T#tube.caller_mon, T#tube.port_mon]),
            discard_handoff(T#tube.id),
            St1 = St#st{tubes = Tubes, mons = Mons, backlog = lists:delete(Key, St#st.backlog)},
            unwatch_peer(Key, St1),
            remove_nodes(Key, St1),
            remove_tip_nodes(Key, T, St1),
            retry_incoming(Key, St1);
        error ->
            St
    end.

%% A new tube from the same nock with the same Tid may have arrived while
%% the old one was still here (and was then ignored): look again.
retry_incoming(Key = {tip, _, _}, St = #st{conn = C}) when C =/= undefined ->
    examine_tip(Key, [], St);
retry_incoming(_Key, St) ->
    St.

discard_handoff(undefined) -> ok;
discard_handoff(Id) -> tube_nif:ring_discard(Id), ok.

remove_nodes(_Key, #st{conn = undefined}) ->
    ok;
%% The per-peer directories of the last tube to that peer go with it; the
%% transaction makes sure no tube was added under them meanwhile.
remove_nodes({nock, Peer, Tid}, #st{conn = C, domid = D}) ->
    Nock = nock_path(D, Peer, Tid),
    Tip = tip_path(Peer, D, Tid),
    Parents = [parent(Nock), parent(Tip)],
    _ = tube_xs:transaction(C, fun(Tx) ->
            Listed = tube_xs:batch(C, [{rm, Tx, Nock}, {rm, Tx, Tip}] ++
                                      [{directory, Tx, P} || P <- Parents]),
            Empty = [P || {P, {ok, []}} <- lists:zip(Parents, lists:nthtail(2, Listed))],
            _ = tube_xs:batch(C, [{rm, Tx, P} || P <- Empty]),
            ok
        end),
    ok;
remove_nodes({tip, _, _}, #st{}) ->
    ok.

%% The tip removes the nock's directory only if it still holds the ring
%% this tip published: the nock may already have opened a new tube with the
%% same Tid there.
remove_tip_nodes({tip, Peer, Tid}, #tube{refs = {Evt, _, _}}, #st{conn = C, domid = D})
  when C =/= undefined ->
    Tip = tip_path(D, Peer, Tid),
    _ = tube_xs:transaction(C, fun(Tx) ->
            case tube_xs:read(C, Tx, [Tip, "/event-channel"]) of
                {ok, Evt} -> tube_xs:rm(C, Tx, Tip);
                _ -> ok
            end
        end),
    ok;
remove_tip_nodes(_Key, _T, _St) ->
    ok.

put_tube(T = #tube{key = Key}, St) ->
    St#st{tubes = maps:put(Key, T, St#st.tubes)}.

abort_tx(C, {ok, Tx}) -> _ = tube_xs:transaction_end(C, Tx, false), ok;
abort_tx(_C, _NotStarted) -> ok.

%% ---- messages --------------------------------------------------------------

handle_info({tube_xs, Tag, {watch, Path, Token}}, St = #st{tag = Tag}) ->
    {noreply, watch_event(Path, Token, St)};
handle_info({tube_xs, Tag, closed}, St = #st{tag = Tag}) ->
    ?LOG_WARNING("tube: Xenstore connection lost; open tubes keep running"),
    erlang:send_after(?RECONNECT_MS, self(), reconnect),
    {noreply, disconnected(St)};
handle_info({tube_xs, _OldTag, _}, St) ->
    {noreply, St};
handle_info(reconnect, St = #st{conn = undefined}) ->
    Tag = erlang:unique_integer([positive]),
    case connect(St#st{tag = Tag}) of
        {ok, St1} ->
            ?LOG_NOTICE("tube: Xenstore connection back, domain ~p", [St1#st.domid]),
            {noreply, republish(St1)};
        {error, _} ->
            erlang:send_after(?RECONNECT_MS, self(), reconnect),
            {noreply, St}
    end;
handle_info({republish, Key}, St = #st{conn = C}) when C =/= undefined ->
    case maps:find(Key, St#st.tubes) of
        {ok, #tube{phase = open}} -> republish_nock(Key, St);
        _ -> ok
    end,
    {noreply, St};
handle_info({ring_done, Key, Result}, St) ->
    {noreply, ring_done(Key, Result, St)};
handle_info({timeout, _Ref, {acceptor, Mon}}, St) ->
    {noreply, acceptor_timeout(Mon, St)};
handle_info({timeout, _Ref, Key}, St) ->
    case maps:find(Key, St#st.tubes) of
        {ok, #tube{phase = P}} when P =:= waiting; P =:= connecting ->
            {noreply, fail(Key, {error, timeout}, St)};
        _ ->
            {noreply, St}
    end;
handle_info({'DOWN', Mon, _, _, _}, St) ->
    case maps:take(Mon, St#st.mons) of
        {{port, Key}, Mons} -> {noreply, drop(Key, St#st{mons = Mons})};
        {{caller, Key}, Mons} -> {noreply, drop(Key, St#st{mons = Mons})};
        {{acceptor, _From}, Mons} -> {noreply, remove_acceptor(Mon, St#st{mons = Mons})};
        error -> {noreply, St}
    end;
handle_info({'EXIT', _Pid, normal}, St) ->
    {noreply, St};
handle_info({'EXIT', _Pid, Reason}, St) ->
    ?LOG_ERROR("tube: ring job crashed: ~p", [Reason]),
    {noreply, St};
handle_info(_Other, St) ->
    {noreply, St}.

watch_event(_Path, _Token, St = #st{conn = undefined}) ->
    St;
watch_event(Path, <<"tip">>, St = #st{conn = C, domid = D}) ->
    case Path =:= tip_dir(D) andalso tube_xs:read(C, Path) =:= {error, enoent} of
        true ->
            %% data/tip is writable by every domain, so one may remove it:
            %% put it back so that new tubes can still reach this node.
            _ = setup_domain(St),
            St;
        false ->
            incoming(Path, St)
    end;
watch_event(_Path, <<"release">>, St) ->
    %% A released domain's name may come back with another domid.
    ets:delete_all_objects(?NAMES),
    domains_changed(St);
watch_event(_Path, <<"introduce">>, St) ->
    maps:foreach(fun(Key, #tube{phase = open}) -> republish_nock(Key, St);
                    (_, _) -> ok
                 end, St#st.tubes),
    domains_changed(St);
watch_event(_Path, Token, St) ->
    case key_of_token(Token) of
        {ok, Key} ->
            flush_events(St#st.tag, Token),
            check(Key, St);
        error ->
            St
    end.

%% One commit fires a tube's watch once per node it wrote, and check/2
%% reads the state as it is after all of them: the events of that watch
%% already queued need no read of their own.
flush_events(Tag, Token) ->
    receive
        {tube_xs, Tag, {watch, _, Token}} -> flush_events(Tag, Token)
    after 0 ->
        ok
    end.

acceptor_timeout(Mon, St) ->
    case lists:keyfind(Mon, 2, St#st.acceptors) of
        {From, Mon, _, _} ->
            gen_server:reply(From, {error, timeout}),
            erlang:demonitor(Mon, [flush]),
            remove_acceptor(Mon, St#st{mons = maps:remove(Mon, St#st.mons)});
        false ->
            St
    end.

remove_acceptor(Mon, St) ->
    case lists:keytake(Mon, 2, St#st.acceptors) of
        {value, {_, _, Timer, _}, Rest} -> cancel_timer(Timer), St#st{acceptors = Rest};
        false -> St
    end.

%% Lost the daemon: handshakes in progress fail, open tubes stay open (their
%% rings do not depend on Xenstore) and are published again on reconnect.
disconnected(St) ->
    St1 = St#st{conn = undefined, live_peers = sets:new()},
    InFlight = [K || {K, #tube{phase = P}} <- maps:to_list(St1#st.tubes), P =/= open, P =/= handed],
    St2 = lists:foldl(fun(K, Acc) -> fail(K, {error, xenstore_down}, Acc) end, St1, InFlight),
    lists:foreach(fun({From, Mon, Timer, _}) ->
                          cancel_timer(Timer),
                          erlang:demonitor(Mon, [flush]),
                          gen_server:reply(From, {error, xenstore_down})
                  end, St2#st.acceptors),
    Mons = maps:filter(fun(_, {acceptor, _}) -> false; (_, _) -> true end, St2#st.mons),
    St2#st{acceptors = [], backlog = [], mons = Mons}.

%% After a reconnection: write again what this side owns for each open tube
%% (a daemon restarted without a database has lost it) and watch the peers.
republish(St) ->
    maps:foreach(fun(Key, #tube{phase = open}) ->
                         _ = watch_peer(Key, St),
                         republish_nock(Key, St);
                    (_, _) ->
                         ok
                 end, St#st.tubes),
    St.

%% The nock's directories of an open tube, if they are missing. The tip
%% fills in its fields again when it sees them (step/5). Needs the peer's
%% domain to be registered again, with its data/tip: also tried on
%% @introduceDomain, and again while the peer is registered but not ready.
republish_nock(Key = {nock, Peer, Tid}, #st{conn = C, domid = D}) ->
    Nock = nock_path(D, Peer, Tid),
    Tip = tip_path(Peer, D, Tid),
    Done = tube_xs:transaction(C, fun(Tx) ->
            case tube_xs:read(C, Tx, [Tip, "/nock"]) of
                {ok, _} ->
                    ok;
                {error, enoent} ->
                    case write_nock(C, Tx, D, Peer, Nock, Tip) of
                        ok -> tube_xs:write(C, Tx, [Nock, "/state"], ?STATE_CONNECTED);
                        E -> E
                    end;
                E ->
                    E
            end
        end),
    case Done of
        ok -> ok;
        _ -> retry_republish(C, Key)
    end;
republish_nock(_Key, _St) ->
    ok.

%% A peer registers before it creates its data/tip, and until then the
%% nock's directories cannot be written there: while the peer is
%% registered, try again shortly.
retry_republish(C, Key = {nock, Peer, _}) ->
    case tube_xs:is_domain_introduced(C, Peer) of
        {ok, true} -> erlang:send_after(?RECONNECT_MS, self(), {republish, Key}), ok;
        _ -> ok
    end.

terminate(_Reason, St) ->
    maps:foreach(fun(Key, _) -> remove_nodes(Key, St) end, St#st.tubes).

%% ---- paths and timers ----------------------------------------------------

domain_path(D) -> <<"/local/domain/", (integer_to_binary(D))/binary>>.
tip_dir(D) -> <<(domain_path(D))/binary, "/data/tip">>.
nock_dir(D) -> <<(domain_path(D))/binary, "/data/nock">>.

%% On domain Self: the nock entry for a tube to Peer.
nock_path(Self, Peer, Tid) ->
    <<(nock_dir(Self))/binary, "/", (integer_to_binary(Peer))/binary, "/", (integer_to_binary(Tid))/binary>>.

%% On domain Self: the tip entry for a tube from Peer.
tip_path(Self, Peer, Tid) ->
    <<(tip_dir(Self))/binary, "/", (integer_to_binary(Peer))/binary, "/", (integer_to_binary(Tid))/binary>>.

parent(Path) ->
    [_ | Rev] = lists:reverse(binary:split(Path, <<"/">>, [global])),
    iolist_to_binary(lists:join(<<"/">>, lists:reverse(Rev))).

start_timer(infinity, _Msg) -> undefined;
start_timer(Ms, Msg) -> erlang:start_timer(Ms, self(), Msg).

cancel_timer(undefined) -> ok;
cancel_timer(Ref) -> erlang:cancel_timer(Ref), ok.

%% ---- node names ----------------------------------------------------------

write_name(#st{name = undefined}) ->
    ok;
write_name(#st{conn = undefined}) ->
    {error, xenstore_down};
write_name(#st{conn = C, domid = D, name = Node}) ->
    Path = name_path(D),
    case tube_xs:write(C, Path, atom_to_binary(Node)) of
        ok -> tube_xs:set_perms(C, Path, [{read, D}]);
        E -> E
    end.

name_path(D) -> iolist_to_binary(["/local/domain/", integer_to_list(D), "/name"]).

%% Reads the names of the domains in batches of domids, from 1 up (the
%% daemon gives out the lowest free domid, and a domain may not list
%% /local/domain), caching every name seen, until Node is found or a whole
%% batch holds no domain at all.
find_name(_Node, #st{conn = undefined}) ->
    {error, not_found};
find_name(Node, St) ->
    find_name(Node, 1, St).

-define(NAME_BATCH, 64).

find_name(_Node, First, _St) when First > 16#7FEF ->
    {error, not_found};
find_name(Node, First, St = #st{conn = C}) ->
    Ds = lists:seq(First, min(First + ?NAME_BATCH - 1, 16#7FEF)),
    Names = tube_xs:batch(C, [{read, 0, name_path(D)} || D <- Ds]),
    Found = [{D, N} || {D, {ok, N}} <- lists:zip(Ds, Names)],
    lists:foreach(fun({D, N}) ->
                          case catch binary_to_existing_atom(N) of
                              A when is_atom(A) -> ets:insert(?NAMES, {A, D});
                              _ -> ok
                          end
                  end, Found),
    case ets:lookup(?NAMES, Node) of
        [{_, D}] -> {ok, D};
        [] when Found =:= [] -> {error, not_found};
        [] -> find_name(Node, First + ?NAME_BATCH, St)
    end.
