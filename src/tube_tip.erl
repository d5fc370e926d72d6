%% @private
%% One tube offered to this node (the tip, seed 001), from the nock's entry
%% under our data/tip to the removal of that entry.
%%
%%   examining -> answering -> backlog -> offering -> connecting
%%             -> handed -> open -> closing
%%                                           connecting -> mapped -> handed
%%
%% `examining' checks the entry (it names the nock of the domain its path
%% names, which owns it, and nobody answered it); `answering' writes state
%% 1, or goes straight to offering when an accept() waits; `backlog' waits
%% for an accept(); `offering' creates the ring and publishes its refs with
%% state 3; `connecting' waits in a ring job until the nock has mapped it
%% (the nock says so on the event channel, so accept() never returns a
%% tube whose other end failed, and without a round trip to the store);
%% `mapped' holds a mapped ring whose accept() caller gave up meanwhile
%% until the next caller takes it (the opener has its tube by then);
%% `handed' waits for the caller's
%% port; `open' follows the peer; `closing' leaves the entry to the nock,
%% which removes it with its own node, or removes it itself if it still
%% holds our ring and the nock does not (leave_to_nock/1). A tube that cannot be taken for a limit of this node
%% tells the nock (state 6, event-channel "error:limit:<what>").
-module(tube_tip).
-behaviour(gen_statem).

-export([init/1, callback_mode/0, handle_event/4, terminate/3]).

%% How long a closing tip leaves the removal of its entry to its nock.
-define(NOCK_LINGER, 1000).

callback_mode() -> handle_event_function.

%% Offer is the accept() caller the registry handed this tube when it
%% started it ({From, Deadline, Tids}), or `none'.
init({Key, Conn, Domid, How, Offer}) ->
    process_flag(trap_exit, true),
    Data0 = (tube_fsm:new(Key, Conn, Domid))#{tries => 0, waiters => []},
    Data = case Offer of
               {From, Deadline, Tids} -> Data0#{from := From, deadline := Deadline, tids => Tids};
               none -> Data0
           end,
    {ok, examining, tube_fsm:row(examining, Data), [{next_event, internal, {examine, How}}]}.

tip(#{key := {tip, Peer, Tid}, domid := D}) -> tube_paths:tip(D, Peer, Tid).
nock(#{key := Key, domid := D}) -> tube_paths:peer_node(Key, D).
tid(#{key := {tip, _, Tid}}) -> Tid.

%% ---- examining ---------------------------------------------------------------

%% A fresh entry is nearly always a new tube: the watch on the nock and the
%% transaction that answers it ride in the same round trip, undone if not.
%% With an accept() caller waiting, the ring is made while that round trip
%% runs (ready_offer/1).
handle_event(internal, {examine, How}, examining, Data = #{key := {tip, Peer, Tid}, domid := D}) ->
    Batch = case How of
                fresh -> taking(Data);
                recheck -> tube_paths:tip_examine(D, Peer, Tid)
            end,
    {keep_state, ready_offer(tube_fsm:ask(examine, Batch, Data))};

handle_event(info, {tube_xs_reply, Ref, Replies}, State, Data) ->
    case tube_fsm:reply(Ref, Replies, Data) of
        stale -> keep_state_and_data;
        {Purpose, Res, Data1} -> tube_fsm:replied(replied(State, Purpose, Res, Data1), Data1)
    end;

%% ---- backlog ------------------------------------------------------------------

handle_event(info, {tube_event, {offer, From, Deadline, Tids}}, backlog, Data) ->
    start_offer(Data#{from := From, deadline := Deadline, tids => Tids});
handle_event(info, {tube_event, {offer, From, Deadline, Tids}}, mapped, Data) ->
    hand(Data#{from := From, deadline := Deadline, tids => Tids});
handle_event(info, {tube_event, {offer, _, _, _}}, State, _Data) when State =:= answering; State =:= examining ->
    {keep_state_and_data, [postpone]};
handle_event(info, {tube_event, {offer, From, Deadline, Tids}}, _State, _Data) ->
    tube_registry:requeue(From, Deadline, Tids),
    keep_state_and_data;
handle_event(info, {tube_event, peer_changed}, State, Data)
  when State =:= backlog; State =:= mapped; State =:= open ->
    tube_fsm:changes_read(),
    {keep_state, tube_fsm:ask(peer_state, [{state, {read, 0, [nock(Data), "/state"]}},
                                           {own, {read, 0, [tip(Data), "/state"]}}], Data)};
handle_event(state_timeout, retry, State, Data) when State =:= answering; State =:= offering ->
    start_tx(State, Data);

%% ---- connecting, handed -------------------------------------------------------------

handle_event(info, {ring_done, Ref, Result}, connecting, Data = #{job := Ref}) ->
    case Result of
        {ok, TubeRes} ->
            {ok, Id} = tube_nif:ring_handoff(TubeRes),
            hand(Data#{handoff => Id});
        Error ->
            case tube_fsm:error_of(ring, Error) of
                {error, {limit, What}} -> lost({error, {limit, What}}, tell_nock(What, Data));
                E -> lost(E, Data)
            end
    end;
handle_event(info, {ring_done, _, _}, _State, _Data) ->
    keep_state_and_data;
handle_event({call, From}, {attach, Port}, handed, Data) ->
    Data1 = maps:remove(handoff, Data#{port_mon => erlang:monitor(port, Port), peer_seen := true}),
    erlang:demonitor(maps:get(caller, Data1, make_ref()), [flush]),
    Fill = fill_again(Data1, [{"state", tube_paths:state(connected)}]),
    {next_state, open, tube_fsm:row(connected, Port, Fill), [{reply, From, ok}]};
handle_event({call, From}, {attach, _}, _State, _Data) ->
    {keep_state_and_data, [{reply, From, {error, closed}}]};
handle_event(cast, abort, handed, Data) ->
    closing(Data);
handle_event(state_timeout, abandoned, handed, Data) ->
    closing(tube_fsm:log(Data, "ring handed over but never attached", timeout));
handle_event(info, {'DOWN', Mon, process, _, _}, handed, Data = #{caller := Mon}) ->
    closing(Data);

%% ---- open --------------------------------------------------------------------

%% Any type: OTP 25 tags the DOWN of a port that died with a reason other
%% than an atom (a refused distribution handshake: {is_allowed, not_allowed},
%% function_clause) as `process'.
handle_event(info, {'DOWN', Mon, _, _, _}, open, Data = #{port_mon := Mon}) ->
    closing(Data);
handle_event(info, {tube_event, domains_changed}, open, Data) ->
    {keep_state, tube_fsm:check_domain(Data)};
handle_event(state_timeout, refill, open, Data) ->
    {keep_state, fill_again(Data, maps:get(fields, Data))};
%% A new connection has none of our watches: watch the nock again (which
%% reads its state at once, and fills our fields in again if the nock
%% published its entry again after a daemon restart).
handle_event(info, {tube_event, {xs_up, Conn}}, open, Data) ->
    {keep_state, tube_fsm:ask(rewatch, [watch_op(Data)], Data#{conn := Conn, peer_seen := false})};

%% ---- closing -----------------------------------------------------------------

handle_event(info, {tube_event, {xs_up, Conn}}, closing, Data) ->
    remove(Data#{conn := Conn});
handle_event(state_timeout, retry, closing, Data) ->
    remove(Data);
handle_event(info, {tube_event, peer_changed}, closing, Data = #{awaiting_nock := true}) ->
    {keep_state, check_nock(Data)};
handle_event(state_timeout, nock_linger, closing, Data = #{awaiting_nock := true}) ->
    remove(Data);
handle_event(info, {tube_event, domains_changed}, closing, Data = #{awaiting_nock := true}) ->
    remove(Data);
handle_event({call, From}, wait_closed, closing, Data = #{waiters := W}) ->
    {keep_state, Data#{waiters := [From | W]}};

%% ---- in any state ------------------------------------------------------------

handle_event(info, {tube_event, peer_changed}, _State, _Data) ->
    tube_fsm:changes_read(),
    keep_state_and_data;
handle_event({call, _From}, wait_closed, _State, _Data) ->
    {keep_state_and_data, [postpone]};
%% Once the ring is offered, the opener is about to have its tube: a caller
%% that gave up meanwhile is answered, and the tube goes to the next one.
handle_event(state_timeout, deadline, State, Data) when State =:= offering; State =:= connecting ->
    {keep_state, tube_fsm:reply_to({error, timeout}, Data)};
handle_event(state_timeout, deadline, State, Data) when State =/= closing ->
    closing(tube_fsm:reply_to({error, timeout}, Data));
handle_event(info, {tube_event, xs_down}, open, Data) ->
    {keep_state, maps:remove(tx, Data#{conn := undefined, peer_seen := false})};
handle_event(info, {tube_event, xs_down}, State, Data) ->
    Data1 = maps:remove(tx, Data#{conn := undefined}),
    case State of
        closing -> {keep_state, Data1};
        _ -> closing(tube_fsm:reply_to({error, xenstore_down}, Data1))
    end;
handle_event(info, {'EXIT', _, normal}, _State, _Data) ->
    keep_state_and_data;
handle_event(info, {'EXIT', _, Reason}, _State, Data) ->
    tube_fsm:log(Data, "ring job crashed", Reason),
    keep_state_and_data;
handle_event(_Type, _Event, _State, _Data) ->
    keep_state_and_data.

%% ---- replies by state -------------------------------------------------------------

replied(examining, examine, Res, Data = #{key := {tip, Peer, _}}) ->
    Expected = nock(Data),
    case {maps:get(nock_ref, Res), maps:get(perms, Res), maps:get(state, Res)} of
        {{ok, Expected}, {ok, [{_, Peer} | _]}, {ok, <<"0">>}} ->
            take(Res, Data);
        {{ok, _}, {ok, [{_, Owner} | _]}, _} when Owner =/= Peer ->
            tube_fsm:log(Data, "ignoring an entry owned by another domain", Owner),
            release(Res, Data);
        _ ->
            release(Res, Data) % gone, incomplete, or answered before
    end;
replied(examining, taken, Res, Data) ->
    replied(examining, examine, Res, Data);
replied(State, started, #{tx := {ok, Tx}, nock_ref := {error, enoent}}, Data) when State =:= answering; State =:= offering ->
    gone(abort_tx(Data#{tx => Tx}));
replied(answering, started, #{tx := {ok, Tx}}, Data) ->
    refill(Data#{tx => Tx});
replied(offering, started, #{tx := {ok, Tx}}, Data) ->
    publish_offer(Data#{tx => Tx});
replied(State, started, #{tx := {error, enospc}}, Data) when State =:= answering; State =:= offering ->
    busy(State, Data);
replied(State, started, #{tx := E}, Data) when State =:= answering; State =:= offering ->
    cannot(tube_fsm:error_of(transactions, E), Data);
replied(State, filled, Res = #{commit := ok}, Data) when State =:= answering; State =:= offering ->
    case tube_paths:first_error([K || K <- maps:keys(Res), K =/= commit], Res) of
        ok -> committed(State, Data);
        E -> cannot(tube_fsm:error_of(nodes, E), Data)
    end;
replied(State, filled, #{commit := {error, eagain}}, Data) when State =:= answering; State =:= offering ->
    start_tx(State, Data);
replied(State, filled, #{commit := E}, Data) when State =:= answering; State =:= offering ->
    cannot(tube_fsm:error_of(nodes, E), Data);
replied(State, peer_state, Res, Data) ->
    peer_state(State, maps:get(state, Res), Res, Data);
replied(open, rewatch, #{watch := ok}, _Data) ->
    keep_state_and_data;
replied(open, rewatch, #{watch := E}, Data) ->
    {keep_state, tube_fsm:log(Data, "watching the nock again", E)};
replied(open, domain, Res, Data) ->
    {keep_state, tube_fsm:domain_checked(Res, Data)};
%% Only into the entry of this tube: it still holds our event channel, or
%% its nock is connected (4; after a daemon restart the nock publishes the
%% entry again, empty). A nock that closed and opened a new tube with the
%% same Tid meanwhile has emptied the event channel and has state 2, and
%% that entry is not ours to fill. The nock's 4 is not waited for: the
%% ring handshake already said it mapped the ring. The entry is read after
%% the transaction started, and the fields written with the commit: had it
%% changed in between, the commit fails (see tube_paths:nock_check/3).
replied(open, fill, Res = #{tx := {ok, Tx}}, Data = #{refs := {Evt, _, _}}) ->
    Commit = maps:get(nock_ref, Res) =/= {error, enoent}
        andalso (maps:get(nock_state, Res) =:= {ok, tube_paths:state(connected)}
                 orelse maps:get(own_evt, Res) =:= {ok, Evt}),
    Batch = case Commit of
                true -> tube_paths:tip_fill(Tx, tip(Data), maps:get(fields, Data));
                false -> []
            end ++ [{'end', {transaction_end, Tx, Commit}}],
    {keep_state, tube_fsm:ask(fill_end, Batch, Data)};
replied(open, fill, #{tx := {error, enospc}}, Data) ->
    {keep_state, Data, [{state_timeout, rand:uniform(50), refill}]};
replied(open, fill, #{tx := E}, Data) ->
    {keep_state, tube_fsm:log(Data, "filling in its fields", E)};
replied(open, fill_end, #{'end' := {error, eagain}}, Data) ->
    {keep_state, fill_again(Data, maps:get(fields, Data))};
replied(open, fill_end, Res = #{'end' := ok}, Data) ->
    case tube_paths:first_error([K || K <- maps:keys(Res), K =/= nock_ref], Res) of
        ok -> keep_state_and_data;
        E -> {keep_state, tube_fsm:log(Data, "filling in its fields", E)}
    end;
replied(open, fill_end, #{'end' := E}, Data) ->
    {keep_state, tube_fsm:log(Data, "filling in its fields", E)};
replied(closing, Purpose, Res, Data) ->
    removed(Purpose, Res, Data);
replied(State, Purpose, Res, Data) ->
    late(State, Purpose, Res, Data).

late(_State, Purpose, Res, Data) ->
    Data1 = case Res of
                #{tx := {ok, Tx}} -> tube_fsm:ask(abort, [{abort, {transaction_end, Tx, false}}], Data);
                _ -> Data
            end,
    %% A fill that came too late was abandoned with its transaction: its
    %% errors (the nock's nodes gone, eacces) say nothing more.
    case [R || {N, R} <- maps:to_list(Res), N =/= unwatch, Purpose =/= fill, Purpose =/= fill_end,
               R =/= ok, not tube_fsm:moot(R), element(1, R) =/= ok] of
        [] -> ok;
        Errors -> tube_fsm:log(Data, io_lib:format("late reply to ~p", [Purpose]), Errors)
    end,
    {keep_state, Data1}.

%% ---- taking an entry ---------------------------------------------------------------

take(#{watch := ok, tx := {ok, Tx}}, Data) ->
    answer(Data#{tx => Tx, watched => true});
take(Res = #{watch := {error, enospc}}, Data) ->
    refuse(watches, Res, Data);
take(#{watch := ok, tx := {error, enospc}}, Data) ->
    busy(answering, Data#{watched => true, answer_first => true});
take(Res = #{watch := _}, Data) ->
    release(Res, Data);
take(_Res, Data) ->
    {keep_state, tube_fsm:ask(taken, taking(Data), Data)}.

%% The watch on the nock, the transaction that answers the entry, and the
%% entry's checks, in one round trip: the checks come after the start of
%% the transaction, so the entry they see was there when it started (it
%% cannot be made again between the two without the commit failing), and
%% the answer's writes can go with their commit in one batch (fill/3).
taking(Data = #{key := {tip, Peer, Tid}, domid := D}) ->
    [{tx, transaction_start} | tube_paths:tip_examine(D, Peer, Tid)] ++ [watch_op(Data)].

%% An entry not taken: what examining started is undone.
release(Res, Data) ->
    Undo = [{unwatch, unwatch_op(Data)} || maps:get(watch, Res, none) =:= ok]
        ++ [{abort, {transaction_end, Tx, false}} || {ok, Tx} <- [maps:get(tx, Res, none)]],
    requeue(Data),
    {stop, normal, tube_fsm:ask(undo, Undo, Data#{from := undefined})}.

%% This node cannot take the tube for one of its limits: it says so to the
%% nock, in the nock's own fields, and to its log.
refuse(What, Res, Data) ->
    tube_fsm:log(Data, "refusing an incoming tube", {limit, What}),
    {stop, normal, Data1} = release(Res, Data),
    {stop, normal, tell_nock(What, Data1)}.

tell_nock(What, Data) ->
    Tip = tip(Data),
    Tell = [{evt, {write, 0, [Tip, "/event-channel"], ["error:limit:", atom_to_list(What)]}},
            {state, {write, 0, [Tip, "/state"], tube_paths:state(closed)}}],
    tube_fsm:ask(refused, Tell, Data).

%% An accept() caller given at the start takes the tube at once.
answer(Data = #{from := {_, _}}) ->
    publish_offer(Data);
answer(Data) ->
    case tube_registry:ready(maps:get(key, Data), tid(Data)) of
        {offer, From, Deadline, Tids} ->
            publish_offer(Data#{from := From, deadline := Deadline, tids => Tids});
        queued ->
            refill(Data)
    end.

refill(Data = #{answer_first := true}) ->
    answer(maps:remove(answer_first, Data));
refill(Data) ->
    {next_state, answering, fill(Data, [{"state", tube_paths:state(initialising)}])}.

committed(answering, Data) ->
    {next_state, backlog, tube_fsm:row(waiting, Data#{tries := 0})};
committed(offering, Data = #{offer := Offer}) ->
    Timeout = tube_fsm:port_opts_timeout(),
    Data1 = tube_fsm:job(fun() -> tube_nif:ring_accept(Offer, Timeout) end, maps:remove(offer, Data)),
    {next_state, connecting, tube_fsm:row(connecting, Data1), tube_fsm:deadline_timeout(Data)}.

start_offer(Data) ->
    start_tx(offering, Data).

%% A transaction for the entry's fields, with the check that the entry is
%% still there after it started (see taking/1).
start_tx(State, Data) ->
    Start = [{tx, transaction_start}, {nock_ref, {read, 0, [tip(Data), "/nock"]}}],
    {next_state, State, tube_fsm:ask(started, Start, Data), tube_fsm:deadline_timeout(Data)}.

busy(State, Data = #{tries := N}) ->
    {next_state, State, Data#{tries := N + 1}, [{state_timeout, rand:uniform(min(64, 1 bsl min(N, 6))), retry}]}.

%% The ring of a tube that goes straight to its accept() caller, made
%% ahead of the check of the entry, which nearly always takes it: an entry
%% not taken drops it (the ring is freed with its last reference). One
%% that cannot be made now is made, and its error answered, when offered.
ready_offer(Data = #{from := {_, _}}) ->
    case tube_nif:ring_offer(tid(Data)) of
        {ok, _, _, _, _} = Offer -> Data#{ready_offer => Offer};
        _ -> Data
    end;
ready_offer(Data) ->
    Data.

%% The ring, and its refs with state 3, in the open transaction.
publish_offer(Data = #{tx := Tx}) ->
    Offer = case Data of
                #{refs := _} -> ok;
                #{ready_offer := Ready} -> Ready;
                _ -> tube_nif:ring_offer(tid(Data))
            end,
    case Offer of
        {ok, Res, Evt, TxRef, RxRef} ->
            publish_offer(maps:remove(ready_offer, Data#{offer => Res, refs => {Evt, TxRef, RxRef}}));
        ok ->
            {Evt, TxRef, RxRef} = maps:get(refs, Data),
            Fields = [{"tx-ring-ref", TxRef}, {"rx-ring-ref", RxRef}, {"event-channel", Evt},
                      {"state", tube_paths:state(initialised)}],
            {next_state, offering, tube_fsm:row(offering, fill(Data, Fields)), tube_fsm:deadline_timeout(Data)};
        Error ->
            case tube_fsm:error_of(ring, Error) of
                {error, {limit, What}} -> refuse(What, #{tx => {ok, Tx}}, maps:remove(tx, Data));
                E -> lost(E, abort_tx(Data))
            end
    end.

%% The nock has mapped the ring: the tube is the accept() caller's. A nock
%% that has closed meanwhile is seen by the port as a peer that leaves.
hand(Data = #{from := undefined}) ->
    case tube_registry:ready(maps:get(key, Data), tid(Data)) of
        {offer, From, Deadline, Tids} -> hand(Data#{from := From, deadline := Deadline, tids => Tids});
        queued -> {next_state, mapped, tube_fsm:row(waiting, Data)}
    end;
hand(Data = #{handoff := Id}) ->
    Caller = case maps:get(from, Data) of {Pid, _} -> Pid; _ -> self() end,
    Data1 = tube_fsm:reply_to({ok, Id, self(), maps:get(key, Data)}, Data#{caller => erlang:monitor(process, Caller)}),
    {next_state, handed, tube_fsm:row(handed, Data1), [{state_timeout, tube_fsm:port_opts_timeout(), abandoned}]}.

%% ---- following the nock ---------------------------------------------------------------

peer_state(State, {error, enoent}, _Res, Data) when State =:= backlog; State =:= mapped ->
    closing(Data#{own_removal => true});
peer_state(State, S, _Res, Data) when State =:= backlog orelse State =:= mapped,
                                      S =:= {ok, <<"5">>} orelse S =:= {ok, <<"6">>} ->
    closing(Data#{own_removal => true});
peer_state(open, S, _Res, Data) when S =:= {ok, <<"5">>}; S =:= {ok, <<"6">>} ->
    tube_fsm:peer_gone(peer_closed, Data),
    keep_state_and_data;
peer_state(open, {error, enoent}, _Res, Data) ->
    {keep_state, tube_fsm:check_domain(Data#{own_removal => true})};
%% After a daemon restart the nock publishes its directory again, empty:
%% fill our fields in again.
peer_state(open, {ok, <<"4">>}, #{own := Own}, Data = #{refs := {Evt, TxRef, RxRef}}) when Own =/= {ok, <<"4">>} ->
    {keep_state, fill_again(Data, [{"tx-ring-ref", TxRef}, {"rx-ring-ref", RxRef},
                             {"event-channel", Evt}, {"state", tube_paths:state(connected)}])};
peer_state(_State, _S, _Res, _Data) ->
    keep_state_and_data.

%% Our fields, in a transaction that fails if the nock's entry went.
fill_again(Data, Fields) ->
    Start = [{tx, transaction_start},
             {nock_ref, {read, 0, [tip(Data), "/nock"]}},
             {nock_state, {read, 0, [nock(Data), "/state"]}},
             {own_evt, {read, 0, [tip(Data), "/event-channel"]}}],
    tube_fsm:ask(fill, Start, Data#{fields => Fields}).

%% Our fields in the open transaction, committed in the same round trip:
%% the entry was there when the transaction started (taking/1,
%% start_tx/2), so the commit fails if it went since.
fill(Data = #{tx := Tx}, Fields) ->
    Batch = tube_paths:tip_fill(Tx, tip(Data), Fields) ++ [{commit, {transaction_end, Tx, true}}],
    tube_fsm:ask(filled, Batch, maps:remove(tx, Data)).

%% The tube failed before its caller had it: the caller waits for the next.
lost(Error, Data) ->
    tube_fsm:log(Data, "incoming tube failed before accept returned", Error),
    requeue(Data),
    closing(Data#{from := undefined, own_removal => true}).

requeue(#{from := undefined}) -> ok;
requeue(#{from := From, deadline := Deadline, tids := Tids}) -> tube_registry:requeue(From, Deadline, Tids).

%% The nock's entry went while answering it: the nock gave up.
gone(Data) ->
    requeue(Data),
    closing(Data#{from := undefined}).

cannot(Error, Data) ->
    tube_fsm:log(Data, "cannot answer an incoming tube", Error),
    requeue(Data),
    closing(Data#{from := undefined, own_removal => true}).

abort_tx(Data = #{tx := Tx}) ->
    tube_fsm:ask(abort, [{abort, {transaction_end, Tx, false}}], maps:remove(tx, Data));
abort_tx(Data) ->
    Data.

watch_op(Data) -> {watch, {watch, nock(Data), maps:get(token, Data)}}.
unwatch_op(Data) -> {unwatch, nock(Data), maps:get(token, Data)}.

%% ---- closing --------------------------------------------------------------------------

closing(Data) ->
    Data0 = abort_tx(tube_fsm:discard(Data)),
    Data1 = tube_fsm:row(closing, Data0#{tries := 0}),
    case leave_to_nock(Data1) of
        true -> await_nock(Data1);
        false -> remove(Data1)
    end.

%% The nock removes the entry with its own node when its tube closes,
%% which it does as soon as its port sees this end go (it owns both): while
%% the nock's node is there, the tip leaves the removal to it rather than
%% race it in a transaction of its own. It checks the nock's node now and
%% on each change (through its watch on that node), and removes the entry
%% itself only if the nock has not within ?NOCK_LINGER ms, or if the
%% connection or the nock's domain goes meanwhile. It removes it at once
%% (`own_removal') when the nock's node is known gone, when the nock failed
%% (state 5 or 6: it waits for the entry to go), and when the tube failed
%% on this side before its caller had it.
leave_to_nock(Data = #{refs := _, watched := true, conn := C}) when C =/= undefined ->
    not maps:get(own_removal, Data, false);
leave_to_nock(_Data) ->
    false.

await_nock(Data) ->
    {next_state, closing, check_nock(Data#{awaiting_nock => true}), [{state_timeout, ?NOCK_LINGER, nock_linger}]}.

check_nock(Data) ->
    tube_fsm:changes_read(),
    tube_fsm:ask(nock_check, [{state, {read, 0, [nock(Data), "/state"]}},
                              {evt, {read, 0, [tip(Data), "/event-channel"]}}], Data).

%% The entry is the nock's to remove while its node is there and the entry
%% still holds this tube's ring: once either is no longer so, the nock has
%% removed its node (and the entry with it, in the same batch) or a new tube
%% took the entry's place, and this tube is done.
nock_checked(#{state := {error, enoent}}, Data) ->
    left_to_nock(Data);
nock_checked(#{state := {ok, S}}, Data) when S =:= <<"5">>; S =:= <<"6">> ->
    %% A nock that could not map the ring waits for this entry to go
    %% before it answers its caller.
    remove(maps:remove(awaiting_nock, Data));
nock_checked(#{state := {ok, _}, evt := Evt}, Data = #{refs := {Own, _, _}}) when Evt =/= {ok, Own} ->
    left_to_nock(Data);
nock_checked(#{state := {ok, _}, evt := {ok, _}}, Data) ->
    {keep_state, Data};
nock_checked(Res, Data) ->
    %% An error of the read itself: the entry is removed here instead.
    tube_fsm:log(Data, "checking the nock before leaving it the entry", maps:values(Res)),
    remove(maps:remove(awaiting_nock, Data)).

left_to_nock(Data) ->
    done(tube_fsm:ask(removed, [{unwatch, unwatch_op(Data)}], maps:remove(awaiting_nock, Data#{watched => false}))).

%% The entry goes only while it holds the ring this tip published: the
%% nock may already have opened a new tube with the same Tid there.
remove(Data = #{conn := undefined}) ->
    {next_state, closing, maps:remove(awaiting_nock, Data)};
remove(Data0) ->
    Data = maps:remove(awaiting_nock, Data0),
    Unwatch = [{unwatch, unwatch_op(Data)} || maps:get(watched, Data, false)],
    case maps:find(refs, Data) of
        {ok, _} ->
            Batch = Unwatch ++ [{tx, transaction_start} | tip_remove(Data)],
            {next_state, closing, tube_fsm:ask(removing, Batch, Data#{watched => false})};
        error ->
            done(tube_fsm:ask(removed, Unwatch, Data#{watched => false}))
    end.

removed(nock_check, Res, Data = #{awaiting_nock := true}) ->
    nock_checked(Res, Data);
removed(nock_check, _Res, Data) ->
    {keep_state, Data};
removed(removing, Res = #{tx := {ok, Tx}}, Data) ->
    removed(removing_read, Res, Data#{tx => Tx});
removed(removing, #{tx := {error, closed}}, Data) ->
    {keep_state, Data};
removed(removing, #{tx := E}, Data) ->
    retry(Data, "removing its entry", E);
removed(removing_read, Res, Data = #{tx := Tx, refs := {Evt, _, _}}) ->
    Rm = [{rm, {rm, Tx, tip(Data)}} || maps:get(evt, Res) =:= {ok, Evt}],
    {keep_state, tube_fsm:ask(removing_end, Rm ++ [{commit, {transaction_end, Tx, true}}], maps:remove(tx, Data))};
removed(removing_end, #{commit := ok}, Data) ->
    done(Data);
removed(removing_end, #{commit := {error, closed}}, Data) ->
    {keep_state, Data};
removed(removing_end, #{commit := {error, eagain}}, Data) ->
    remove(Data);
removed(removing_end, #{commit := E}, Data) ->
    retry(Data, "removing its entry", E);
removed(Purpose, Res, Data) ->
    late(closing, Purpose, Res, Data).

retry(Data, What, Why) ->
    tube_fsm:retry_removal(Data, What, Why).

%% The entry's event channel, read after the transaction that removes it
%% started: if it is ours then, it was ours at the start, and the commit
%% fails if it changed since.
tip_remove(#{key := {tip, Peer, Tid}, domid := D}) ->
    tube_paths:tip_remove(D, Peer, Tid).

done(Data) ->
    tube_fsm:removal_done(Data).

terminate(_Reason, _State, Data) ->
    tube_fsm:discard(Data),
    %% A caller this tube never answered waits for the next.
    requeue(Data),
    %% An accept() caller handed to this tube while it ended waits for the next.
    receive
        {tube_event, {offer, From, Deadline, Tids}} -> tube_registry:requeue(From, Deadline, Tids)
    after 0 ->
        ok
    end,
    ok.
