%% @private
%% The node's tube registry: which process runs which tube, the Xenstore
%% link (tube_link, reconnected when it drops), the routing of watch events
%% to the tubes they concern (tube_link tells a tube of changes to its
%% peer's node itself, through this table: holder/1), and the pairing of
%% accept() callers with incoming tubes.
%%
%% It never waits on Xenstore and never calls a tube process: every
%% request it gets is answered from its own state, and every tube keeps
%% its row in the public table `tube_registry', so that info/1, tubes/0,
%% close/1 and domid/0 answer while the daemon is stopped, gone or slow.
%% Each tube's handshake and life run in their own gen_statem (tube_nock,
%% tube_tip) under tube_tubes_sup.
-module(tube_registry).
-behaviour(gen_server).

-export([start_link/0, domid/0, conn/0, publish_name/1, publish_name/2]).
-export([open/4, ready/2, requeue/3, await_accept/2, cancel_accept/1, holder/1]).
-export([put_row/4, del_rows/3, rows/0, row_of_port/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-include_lib("kernel/include/logger.hrl").

-define(TAB, ?MODULE).
-define(RECONNECT_MS, 250).
%% How long after a tip ends a change of its entry's own path is taken for
%% the removal of that entry (ended_tip/2).
-define(ENDED_MS, 2000).

-record(acc, {from, deadline, tids, timer, mon}).

-record(st, {
    link,              % tube_link pid, undefined between links
    conn,              % Xenstore connection, undefined while down
    domid,
    tubes = #{},       % Key -> Pid
    pids = #{},        % Pid -> Key (monitored)
    queued = #{},      % Key -> [Pid]: tubes waiting for a closing one
    acceptors = [],    % [#acc{}], oldest first
    backlog = [],      % [Key]: incoming tubes waiting for an accept
    seen = #{},        % tip Key -> true: its entry changed while held
    ended = #{},       % tip Key -> when its tube ended (ms), for ?ENDED_MS
    name,              % node name to publish, or undefined
    dist = false,      % true when tube_dist listens: the name is published with the carrier's mark
    deadlines = #{},   % Pid -> its opener's deadline (tube_nock)
    rechecks = #{}     % Ref -> tip Key: its entry read after its tube ended
}).

%% ---- API ---------------------------------------------------------------------

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% This node's domid, also while Xenstore is down.
domid() ->
    case ets:lookup(?TAB, domid) of
        [{domid, D}] -> D;
        %% Only before the first link of a control plane started at boot.
        [] -> exit(xenstore_down)
    end.

conn() ->
    case catch ets:lookup(?TAB, conn) of
        [{conn, C}] -> {ok, C};
        _ -> {error, xenstore_down}
    end.

%% @doc Publishes Node as this node's name at `/local/domain/<domid>/name'
%% (again after each reconnection), where tube:domid/1 finds it; whether
%% the node's distribution listens on tubes stays as it was.
-spec publish_name(node()) -> ok | {error, term()}.
publish_name(Node) when is_atom(Node) ->
    gen_server:call(?MODULE, {publish_name, Node, keep});
publish_name(_) ->
    erlang:error(badarg).

%% @doc As publish_name/1, and with `[dist]' marks the node as one whose
%% distribution listens on tubes (tube_dist), so that the other nodes of
%% this host reach it over a tube (tube_names:tube_dist/1).
-spec publish_name(node(), [dist]) -> ok | {error, term()}.
publish_name(Node, Flags) when is_atom(Node), is_list(Flags) ->
    gen_server:call(?MODULE, {publish_name, Node, lists:member(dist, Flags)});
publish_name(_, _) ->
    erlang:error(badarg).

%% open/3 asks for a nock Key on behalf of ReplyTo, who waits until
%% Deadline: {ok, Pid} of the tube_nock started with the key (or queued
%% for it behind a closing tube, which still holds it), or the error that
%% refuses the key. At most Wait ms; the registry answers from its own
%% state.
open(Key, ReplyTo, Deadline, Wait) ->
    Req = gen_server:send_request(?MODULE, {open, Key, ReplyTo, Deadline}),
    case gen_server:receive_response(Req, Wait) of
        {reply, Reply} -> Reply;
        timeout -> {error, timeout};
        {error, {noproc, _}} -> {error, not_started};
        {error, {Reason, _}} -> {error, {control_plane, Reason}}
    end.

%% An incoming tube is ready to be accepted: {offer, From, Deadline} hands
%% it an accept() caller, `queued' keeps it in the backlog until one comes.
ready(Key, Tid) -> gen_server:call(?MODULE, {ready, Key, Tid}, infinity).

%% An accept() caller whose tube failed before it was handed over waits for
%% the next one.
requeue(From, Deadline, Tids) -> gen_server:cast(?MODULE, {requeue, From, Deadline, Tids}).

%% The process holding Key, read from the table without asking the
%% registry: tube_link tells it of changes to its peer's node directly.
holder(Key) ->
    try ets:lookup(?TAB, {tube, Key}) of
        [{_, Pid, _, _}] -> {ok, Pid};
        [] -> error
    catch
        error:badarg -> error % the registry is gone
    end.

%% Waits for an incoming tube with a Tid in Tids, at most Timeout ms.
await_accept(Tids, Timeout) ->
    Req = gen_server:send_request(?MODULE, {accept, Tids, deadline(Timeout)}),
    case gen_server:receive_response(Req, Timeout) of
        {reply, Reply} -> Reply;
        timeout -> cancel_accept(self()), {error, timeout};
        {error, {_, _}} -> {error, xenstore_down}
    end.

cancel_accept(Pid) -> gen_server:cast(?MODULE, {cancel_accept, Pid}).

%% Rows of the table, written by the tube processes themselves.
put_row(Key, Pid, Phase, Port) ->
    ets:insert(?TAB, {{tube, Key}, Pid, Phase, Port}),
    Port =/= undefined andalso ets:insert(?TAB, {{port, Port}, Key, Pid}),
    ok.

%% Only the rows of the process Pid: a tube refused a key in use must not
%% remove the rows of the tube that holds it.
del_rows(Key, Pid, Port) ->
    case ets:lookup(?TAB, {tube, Key}) of
        [{_, Pid, _, _}] -> del_rows(Key, Port);
        _ -> ok
    end.

del_rows(Key, Port) ->
    ets:delete(?TAB, {tube, Key}),
    Port =/= undefined andalso ets:delete(?TAB, {port, Port}),
    ok.

%% [{Key, Pid, Phase, Port}]; none while the application is stopped.
rows() ->
    try ets:match_object(?TAB, {{tube, '_'}, '_', '_', '_'}) of
        Rows -> [{K, P, Ph, Po} || {{tube, K}, P, Ph, Po} <- Rows]
    catch
        error:badarg -> []
    end.

row_of_port(Port) ->
    try ets:lookup(?TAB, {port, Port}) of
        Found -> row_of_port(Port, Found)
    catch
        error:badarg -> error
    end.

row_of_port(Port, Found) ->
    case Found of
        [{_, Key, Pid}] ->
            case ets:lookup(?TAB, {tube, Key}) of
                [{_, Pid, Phase, Port}] -> {ok, Key, Pid, Phase};
                _ -> error
            end;
        [] ->
            error
    end.

%% ---- start-up and the link -------------------------------------------------------

init([]) ->
    process_flag(trap_exit, true),
    ets:new(?TAB, [named_table, public, set, {read_concurrency, true}]),
    connect_now().

%% The first link, waited for: once the application has started (or the
%% kernel, for the distribution carrier), domid/0 answers.
connect_now() ->
    Link = tube_link:start_link(self(), undefined),
    receive
        {link_up, Link, Conn, D} ->
            ets:insert(?TAB, [{domid, D}, {conn, Conn}]),
            St = #st{link = Link, conn = Conn, domid = D},
            {ok, publish_own_name(St)};
        {link_down, Link, Reason} ->
            {stop, Reason};
        {'EXIT', Link, Reason} ->
            {stop, Reason}
    end.

%% The node name known to the runtime, unless publish_name/1 set one.
publish_own_name(St = #st{name = undefined}) ->
    case node() of
        nonode@nohost -> St;
        N -> publish_own_name(St#st{name = N})
    end;
publish_own_name(St = #st{link = Link, name = N, dist = Dist}) when is_pid(Link) ->
    tube_link:publish_name(Link, atom_to_binary(N), Dist),
    St;
publish_own_name(St) ->
    St.

link_up(Conn, D, St) ->
    ?LOG_NOTICE("tube: Xenstore connection back, domain ~p", [D]),
    ets:insert(?TAB, [{domid, D}, {conn, Conn}]),
    broadcast({xs_up, Conn}, St),
    publish_own_name(St#st{conn = Conn, domid = D}).

link_down(Reason, St = #st{conn = Conn}) ->
    Conn =/= undefined andalso
        ?LOG_WARNING("tube: Xenstore connection lost (~p); open tubes keep running", [Reason]),
    ets:delete(?TAB, conn),
    broadcast(xs_down, St),
    erlang:send_after(?RECONNECT_MS, self(), reconnect),
    fail_acceptors(St#st{link = undefined, conn = undefined, backlog = [], rechecks = #{}}).

fail_acceptors(St) ->
    lists:foreach(fun(A) -> reply_acceptor(A, {error, xenstore_down}) end, St#st.acceptors),
    St#st{acceptors = []}.

%% ---- calls ---------------------------------------------------------------------------

handle_call({open, Key, ReplyTo, Deadline}, _From, St) ->
    case claim(Key, St) of
        {error, _} = E ->
            {reply, E, St};
        Claim ->
            case tube_tubes_sup:start_tube(tube_nock, {Key, ReplyTo, Deadline, Claim}) of
                {ok, Pid} ->
                    St1 = claimed(Claim, Key, Pid, St),
                    {reply, {ok, Pid}, St1#st{deadlines = maps:put(Pid, Deadline, St1#st.deadlines)}};
                {error, R} ->
                    {reply, {error, {control_plane, R}}, St}
            end
    end;
handle_call({ready, Key, Tid}, _From, St) ->
    case take_acceptor(Tid, St#st.acceptors) of
        {A, Rest} ->
            cancel(A),
            {reply, {offer, A#acc.from, A#acc.deadline, A#acc.tids}, St#st{acceptors = Rest}};
        none ->
            {reply, queued, St#st{backlog = St#st.backlog ++ [Key]}}
    end;
handle_call({accept, _Tids, _Deadline}, _From, St = #st{conn = undefined}) ->
    {reply, {error, xenstore_down}, St};
handle_call({accept, Tids, Deadline}, From, St) ->
    {noreply, add_acceptor(From, Deadline, Tids, St)};
handle_call({publish_name, Node, Dist}, _From, St) ->
    St1 = publish_own_name(St#st{name = Node, dist = case Dist of keep -> St#st.dist; _ -> Dist end}),
    {reply, case St1#st.conn of undefined -> {error, xenstore_down}; _ -> ok end, St1}.

handle_cast({requeue, From, Deadline, Tids}, St = #st{conn = undefined}) ->
    _ = Tids, _ = Deadline,
    gen_server:reply(From, {error, xenstore_down}),
    {noreply, St};
handle_cast({requeue, From, Deadline, Tids}, St) ->
    {noreply, add_acceptor(From, Deadline, Tids, St)};
handle_cast({cancel_accept, Pid}, St) ->
    {Gone, Kept} = lists:partition(fun(#acc{from = {P, _}}) -> P =:= Pid end, St#st.acceptors),
    lists:foreach(fun cancel/1, Gone),
    {noreply, St#st{acceptors = Kept}}.

%% Whether a new tube may take Key: {ok, Conn, Domid}, `wait' (a closing
%% tube still holds it: `key_free' follows), or the error that refuses it.
claim(_Key, #st{conn = undefined}) ->
    {error, xenstore_down};
claim({_, D, _}, #st{domid = D}) ->
    {error, self};
claim(Key, St) ->
    case maps:find(Key, St#st.tubes) of
        error ->
            {ok, St#st.conn, St#st.domid};
        {ok, Holder} ->
            Row = ets:lookup(?TAB, {tube, Key}),
            case closing(Row) orelse given_up(Row, maps:get(Holder, St#st.deadlines, infinity)) of
                true -> wait;
                false -> {error, tid_in_use}
            end
    end.

%% The tube Pid started with claim/2's answer holds Key, or waits for it.
claimed({ok, _, _}, Key, Pid, St) ->
    hold(Key, Pid, St);
claimed(wait, Key, Pid, St) ->
    erlang:monitor(process, Pid),
    Q = maps:get(Key, St#st.queued, []),
    St#st{queued = maps:put(Key, Q ++ [Pid], St#st.queued),
          pids = maps:put(Pid, {queued, Key}, St#st.pids)}.

%% Whether the tube holding a key is going: closing, or its port closed
%% (its process is about to hear of it).
closing([]) -> true; % its process ended; the registry hears of it next
closing([{_, _, closing, _}]) -> true;
closing([{_, _, failing, _}]) -> true;
closing([{_, _, connected, Port}]) when is_port(Port) -> erlang:port_info(Port, connected) =:= undefined;
closing(_) -> false.

%% An opening tube whose caller's deadline has passed is about to close
%% (its own deadline timeout, or the caller's cancel, may not have been
%% handled yet): a reopen right after a timed-out open waits for it.
given_up(_Row, infinity) ->
    false;
given_up([{_, _, Phase, _}], Deadline) when Phase =:= claimed; Phase =:= publishing;
                                             Phase =:= waiting; Phase =:= connecting ->
    Deadline =< erlang:monotonic_time(millisecond);
given_up(_Row, _Deadline) ->
    false.

hold(Key, Pid, St) ->
    case maps:is_key(Pid, St#st.pids) of
        true -> ok;
        false -> erlang:monitor(process, Pid)
    end,
    ets:insert_new(?TAB, {{tube, Key}, Pid, claimed, undefined}),
    St#st{tubes = maps:put(Key, Pid, St#st.tubes), pids = maps:put(Pid, Key, St#st.pids)}.

%% ---- accept() callers ----------------------------------------------------------

deadline(infinity) -> infinity;
deadline(Ms) -> erlang:monotonic_time(millisecond) + Ms.

add_acceptor(From = {Pid, _}, Deadline, Tids, St) ->
    case backlog_match(Tids, St#st.backlog) of
        {Key, Rest} ->
            tell(maps:get(Key, St#st.tubes), {offer, From, Deadline, Tids}),
            St#st{backlog = Rest};
        none ->
            Timer = case Deadline of
                        infinity -> undefined;
                        _ -> erlang:start_timer(max(0, Deadline - erlang:monotonic_time(millisecond)),
                                                self(), {accept_timeout, From})
                    end,
            A = #acc{from = From, deadline = Deadline, tids = Tids, timer = Timer,
                     mon = erlang:monitor(process, Pid)},
            St#st{acceptors = St#st.acceptors ++ [A]}
    end.

backlog_match(Tids, Backlog) ->
    case lists:splitwith(fun({_, _, Tid}) -> not in(Tid, Tids) end, Backlog) of
        {_, []} -> none;
        {Before, [Key | After]} -> {Key, Before ++ After}
    end.

take_acceptor(Tid, Acceptors) ->
    case lists:splitwith(fun(#acc{tids = Tids}) -> not in(Tid, Tids) end, Acceptors) of
        {_, []} -> none;
        {Before, [A | After]} -> {A, Before ++ After}
    end.

in(Tid, {Min, Max}) -> Tid >= Min andalso Tid =< Max.

reply_acceptor(A, Reply) ->
    cancel(A),
    gen_server:reply(A#acc.from, Reply).

cancel(#acc{timer = T, mon = M}) ->
    T =/= undefined andalso erlang:cancel_timer(T),
    erlang:demonitor(M, [flush]).

%% ---- events ----------------------------------------------------------------------

handle_info({xs_events, Link, Events}, St = #st{link = Link}) ->
    {noreply, lists:foldl(fun route/2, St, Events)};
handle_info({xs_events, _OldLink, _}, St) ->
    {noreply, St};
handle_info({link_up, Link, Conn, D}, St = #st{link = Link}) ->
    {noreply, link_up(Conn, D, St)};
handle_info({link_down, Link, Reason}, St = #st{link = Link}) ->
    {noreply, link_down(Reason, St)};
handle_info({'EXIT', Link, Reason}, St = #st{link = Link}) ->
    {noreply, link_down(Reason, St)};
handle_info({'EXIT', _Pid, _Reason}, St) ->
    {noreply, St};
handle_info({tube_xs_reply, Ref, Reply}, St) ->
    case maps:take(Ref, St#st.rechecks) of
        {Key, Rechecks} -> {noreply, rechecked(Key, Reply, St#st{rechecks = Rechecks})};
        error -> {noreply, St}
    end;
handle_info(reconnect, St = #st{link = undefined}) ->
    {noreply, St#st{link = tube_link:start_link(self(), St#st.domid)}};
handle_info(reconnect, St) ->
    {noreply, St};
handle_info({timeout, _, {accept_timeout, From}}, St) ->
    case lists:partition(fun(#acc{from = F}) -> F =:= From end, St#st.acceptors) of
        {[A], Rest} ->
            reply_acceptor(A, {error, timeout}),
            {noreply, St#st{acceptors = Rest}};
        _ ->
            {noreply, St}
    end;
handle_info({'DOWN', Mon, process, Pid, _}, St0) ->
    St = St0#st{deadlines = maps:remove(Pid, St0#st.deadlines)},
    case maps:take(Pid, St#st.pids) of
        {{queued, Key}, Pids} ->
            Q = lists:delete(Pid, maps:get(Key, St#st.queued, [])),
            {noreply, St#st{pids = Pids, queued = maps:put(Key, Q, St#st.queued)}};
        {Key, Pids} ->
            {noreply, released(Key, Pid, St#st{pids = Pids})};
        error ->
            {Gone, Kept} = lists:partition(fun(#acc{mon = M}) -> M =:= Mon end, St#st.acceptors),
            lists:foreach(fun cancel/1, Gone),
            {noreply, St#st{acceptors = Kept}}
    end;
handle_info(Other, St) ->
    ?LOG_WARNING("tube: registry got an unexpected message: ~p", [Other]),
    {noreply, St}.

%% A tube process ended: its key goes to the first tube queued for it.
released(Key, Pid, St) ->
    case ets:lookup(?TAB, {tube, Key}) of
        [{_, Pid, _, Port}] -> del_rows(Key, Port);
        _ -> ok
    end,
    Seen = maps:is_key(Key, St#st.seen),
    St1 = ended(Key, St#st{tubes = maps:remove(Key, St#st.tubes),
                           backlog = lists:delete(Key, St#st.backlog), seen = maps:remove(Key, St#st.seen)}),
    case maps:get(Key, St1#st.queued, []) of
        [Next | Rest] ->
            tell(Next, {key_free, St#st.conn, St#st.domid}),
            ets:insert(?TAB, {{tube, Key}, Next, claimed, undefined}),
            St2 = St1#st{queued = maps:put(Key, Rest, St1#st.queued),
                         pids = maps:put(Next, Key, St1#st.pids)},
            St2#st{tubes = maps:put(Key, Next, St2#st.tubes)};
        [] ->
            recheck(Seen, Key, St1#st{queued = maps:remove(Key, St1#st.queued)})
    end.

%% A nock may have published a new tube with the same Tid while the old tip
%% was still closing (its events went to the old one): look again. Nearly
%% always those events were the nock removing the old entry, so the entry
%% is read first (without waiting: the reply comes as a message), and a
%% tip is started only if it is there. An entry made after the read is
%% told by its own events.
recheck(true, Key = {tip, Peer, Tid}, St = #st{conn = C, domid = D}) when C =/= undefined ->
    Ref = tube_xs:send(C, [{nock_ref, {read, 0, [tube_paths:tip(D, Peer, Tid), "/nock"]}}]),
    St#st{rechecks = maps:put(Ref, Key, St#st.rechecks)};
recheck(_Seen, _Key, St) ->
    St.

rechecked(Key, [{ok, _}], St = #st{conn = C, domid = D}) when C =/= undefined ->
    case maps:is_key(Key, St#st.tubes) of
        true -> St; % its events started a tip meanwhile
        false -> start_tip(Key, {Key, C, D, recheck}, St)
    end;
rechecked(_Key, _Reply, St) ->
    St.

%% The tip process starts with the first accept() caller waiting for its
%% Tid, if any, so that it need not ask for one once it has checked the
%% entry; if it does not take the tube, it hands the caller back
%% (requeue/3).
start_tip(Key = {tip, _, Tid}, {Key, C, D, How}, St) ->
    {Offer, St1} = case take_acceptor(Tid, St#st.acceptors) of
                       {A, Rest} ->
                           cancel(A),
                           {{A#acc.from, A#acc.deadline, A#acc.tids}, St#st{acceptors = Rest}};
                       none ->
                           {none, St}
                   end,
    case tube_tubes_sup:start_tube(tube_tip, {Key, C, D, How, Offer}) of
        {ok, Pid} ->
            hold(Key, Pid, St1);
        {error, R} ->
            ?LOG_ERROR("tube: cannot start ~p: ~p", [Key, R]),
            case Offer of
                {From, Deadline, Tids} -> add_acceptor(From, Deadline, Tids, St1);
                none -> St1
            end
    end.

route({watch, Path, <<"tip">>}, St = #st{domid = D}) ->
    TipDir = tube_paths:tip_dir(D),
    case tube_paths:parse_tip_event(Path, D) of
        {ok, Peer, Tid, [<<"nock">>]} -> incoming({tip, Peer, Tid}, St);
        {ok, Peer, Tid, []} -> entry_changed({tip, Peer, Tid}, St);
        {ok, _, _, _} -> St;
        error when Path =:= TipDir, St#st.link =/= undefined ->
            tube_link:resetup(St#st.link),
            St;
        error -> St
    end;
route({watch, _, <<"release">>}, St) ->
    ets:match_delete(?TAB, {{name, '_'}, '_'}),
    ets:match_delete(?TAB, {{domain_name, '_'}, '_'}),
    ets:match_delete(?TAB, {{tube_dist, '_'}, '_'}),
    broadcast(domains_changed, St),
    St;
route({watch, _, <<"introduce">>}, St) ->
    broadcast(domains_changed, St),
    St;
route({watch, _, Token}, St) ->
    case tube_paths:key_of_token(Token) of
        {ok, Key} -> changed(Key, St);
        error -> St
    end.

%% A tube is told each change to its peer's node; it reads the peer's
%% state once for all those it was told of (tube_fsm:changes_read/0).
changed(Key, St) ->
    case maps:find(Key, St#st.tubes) of
        {ok, Pid} -> tell(Pid, peer_changed);
        error -> ok
    end,
    St.

%% The entry's own path changed: the nock made it (its `nock' field follows
%% in the same transaction), or it was removed. A tip is started at once
%% for an entry not held, unless a tip of that key ended a moment ago:
%% then this is nearly always the nock removing the entry, and a new tube
%% there is seen by its `nock' field.
entry_changed(Key, St) ->
    case maps:is_key(Key, St#st.tubes) orelse ended_tip(Key, St) of
        true -> St;
        false -> incoming(Key, St)
    end.

ended_tip(Key, #st{ended = Ended}) ->
    case Ended of
        #{Key := At} -> erlang:monotonic_time(millisecond) - At < ?ENDED_MS;
        _ -> false
    end.

%% Remembers when a tip ended, forgetting those ended long enough ago.
ended({tip, _, _} = Key, St = #st{ended = Ended}) ->
    Now = erlang:monotonic_time(millisecond),
    Kept = case map_size(Ended) >= 256 of
               true -> maps:filter(fun(_, At) -> Now - At < ?ENDED_MS end, Ended);
               false -> Ended
           end,
    St#st{ended = Kept#{Key => Now}};
ended(_Key, St) ->
    St.

%% The `nock' field of an entry under data/tip/<Peer>/<Tid> was written:
%% only a nock writes it, when it creates the entry (or creates it again
%% after a daemon restart), so that is the change of an entry that says it
%% may be a new tube. The other fields are written by the nock in the same
%% transaction, or later by the tip: those need no look. A tip process is
%% started to look at a new entry. The tube that holds the key is not told:
%% the entry is written by its nock, in the transactions that also write
%% the nock's node, which the tube watches itself, or by the tube (about
%% a dozen events a handshake); a change while it is held is only noted,
%% for the entry to be looked at again once the tube ends (recheck/3).
incoming(Key, St = #st{conn = C, domid = D}) when C =/= undefined ->
    case maps:find(Key, St#st.tubes) of
        {ok, _} ->
            St#st{seen = maps:put(Key, true, St#st.seen)};
        error ->
            start_tip(Key, {Key, C, D, fresh}, St#st{ended = maps:remove(Key, St#st.ended)})
    end;
incoming(_Key, St) ->
    St.

tell(Pid, Event) -> Pid ! {tube_event, Event}, ok.

broadcast(Event, St) ->
    maps:foreach(fun(_Key, Pid) -> tell(Pid, Event) end, St#st.tubes).

%% The application stops: every owner hears of it before its port closes.
terminate(_Reason, St) ->
    lists:foreach(fun({_Key, _Pid, _Phase, undefined}) -> ok;
                     ({_Key, _Pid, _Phase, Port}) -> shutdown_port(Port)
                  end, rows()),
    St#st.link =/= undefined andalso tube_link:stop(St#st.link),
    St#st.domid =/= undefined andalso tube_lease:drop(St#st.domid),
    ok.

shutdown_port(Port) ->
    case erlang:port_info(Port, connected) of
        {connected, Owner} ->
            Owner ! {tube_closed, Port, shutdown},
            catch erlang:port_close(Port);
        undefined ->
            ok
    end.
