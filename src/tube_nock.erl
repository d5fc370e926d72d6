%% @private
%% One tube opened by this node (the nock, seed 001), from open/3 to the
%% removal of its nodes.
%%
%%   idle | queued -> publishing -> waiting -> connecting -> handed -> open -> closing
%%                                               connecting -> failing -> closing
%%
%% `queued' waits for a closing tube with the same key; `publishing'
%% writes both directories in one transaction; `waiting' follows the tip's
%% state until it offers a ring (3); `connecting' maps it in a ring job
%% and writes 4 once it is mapped; `failing' tells the tip a ring that
%% could not be mapped (6) and waits a moment for it to let go;
%% `handed' waits for the caller's port; `open' follows the peer for as
%% long as the port lives; `closing' removes the nodes, again after a
%% reconnection if need be, and ends the process. Every wait of the caller
%% is a state timeout at the caller's deadline.
-module(tube_nock).
-behaviour(gen_statem).

-export([init/1, callback_mode/0, handle_event/4, terminate/3]).

-include_lib("kernel/include/logger.hrl").

-define(LINGER, 1000).

callback_mode() -> handle_event_function.

%% Started by the registry for open/3, with its request (From answers its
%% caller) and the key: held ({ok, Conn, Domid}), or `wait' for a closing
%% tube to let it go.
init({Key, From = {Caller, _}, Deadline, Claim}) ->
    process_flag(trap_exit, true),
    Data0 = (tube_fsm:new(Key, undefined, undefined))#{waiters => [], tries => 0},
    Data = Data0#{from := From, deadline := Deadline, caller => erlang:monitor(process, Caller)},
    case Claim of
        {ok, Conn, Domid} -> {ok, idle, Data#{conn := Conn, domid := Domid}, [{next_event, internal, publish}]};
        wait -> {ok, queued, Data, tube_fsm:deadline_timeout(Data)}
    end.

%% ---- idle, queued --------------------------------------------------------------

handle_event(internal, publish, idle, Data) ->
    publish(Data);
handle_event(info, {tube_event, {key_free, Conn, Domid}}, queued, Data) ->
    case Conn of
        undefined -> {stop, normal, tube_fsm:reply_to({error, xenstore_down}, Data)};
        _ -> publish(Data#{conn := Conn, domid := Domid})
    end;
%% A queued tube has written nothing and holds no key: giving up, it just
%% ends (the registry hands the key on, should it have given it meanwhile).
handle_event(state_timeout, deadline, queued, Data) ->
    {stop, normal, tube_fsm:reply_to({error, timeout}, Data)};
handle_event(cast, cancel, queued, Data) ->
    {stop, normal, tube_fsm:reply_to({error, timeout}, Data)};
handle_event(info, {'DOWN', Mon, process, _, _}, queued, Data = #{caller := Mon}) ->
    {stop, normal, Data};
handle_event(info, {tube_event, xs_down}, queued, Data) ->
    {stop, normal, tube_fsm:reply_to({error, xenstore_down}, Data)};

%% ---- publishing ---------------------------------------------------------------

handle_event(info, {tube_xs_reply, Ref, Replies}, State, Data) ->
    case tube_fsm:reply(Ref, Replies, Data) of
        stale -> keep_state_and_data;
        {Purpose, Res, Data1} -> tube_fsm:replied(replied(State, Purpose, Res, Data1), Data1)
    end;
handle_event(state_timeout, retry, publishing, Data) ->
    publish(Data);
handle_event({timeout, peer_ready}, retry, publishing, Data) ->
    publish(Data);

%% ---- connecting, handed -----------------------------------------------------------

handle_event(info, {ring_done, Ref, Result}, connecting, Data = #{job := Ref}) ->
    case Result of
        {ok, TubeRes} ->
            {ok, Id} = tube_nif:ring_handoff(TubeRes),
            %% The ring is mapped: state 4 now, so that the tip hands the
            %% tube to its accept() while our caller opens the port.
            Data1 = tube_fsm:reply_to({ok, Id, self(), maps:get(key, Data)}, announce(Data#{handoff => Id})),
            {next_state, handed, tube_fsm:row(handed, Data1),
             [{state_timeout, tube_fsm:port_opts_timeout(), abandoned}]};
        Error ->
            failing(ring_error(Error), Data)
    end;
handle_event(info, {ring_done, _, _}, _State, _Data) ->
    keep_state_and_data; % a job whose caller gave up; its ring is freed by GC
handle_event({call, From}, {attach, Port}, handed, Data) ->
    erlang:demonitor(maps:get(caller, Data), [flush]),
    Data1 = maps:remove(handoff, Data#{port_mon => erlang:monitor(port, Port), peer_seen := true}),
    {next_state, open, tube_fsm:row(connected, Port, Data1), [{reply, From, ok}]};
handle_event({call, From}, {attach, _Port}, _State, _Data) ->
    {keep_state_and_data, [{reply, From, {error, closed}}]};
handle_event(cast, abort, handed, Data) ->
    closing(Data);
handle_event(state_timeout, abandoned, handed, Data) ->
    closing(tube_fsm:log(Data, "ring handed over but never attached", timeout));

%% ---- failing -------------------------------------------------------------------------

handle_event(info, {tube_event, peer_changed}, failing, Data = #{key := Key, domid := D}) ->
    tube_fsm:changes_read(),
    {keep_state, tube_fsm:ask(failed, tube_paths:offer_read(tube_paths:peer_node(Key, D)), Data)};
handle_event(state_timeout, linger, failing, Data = #{error := Error}) ->
    fail(Error, Data);

%% ---- open ------------------------------------------------------------------------

%% Any type: OTP 25 tags the DOWN of a port that died with a reason other
%% than an atom (a refused distribution handshake: {is_allowed, not_allowed},
%% function_clause) as `process'.
handle_event(info, {'DOWN', Mon, _, _, _}, open, Data = #{port_mon := Mon}) ->
    closing(Data);
handle_event(info, {tube_event, peer_changed}, open, Data = #{key := Key, domid := D}) ->
    tube_fsm:changes_read(),
    Node = tube_paths:peer_node(Key, D),
    {keep_state, tube_fsm:ask(peer_state, [{state, {read, 0, [Node, "/state"]}}], Data)};
handle_event(info, {tube_event, domains_changed}, open, Data) ->
    Data1 = tube_fsm:check_domain(Data),
    case maps:get(republished, Data1, true) of
        true -> {keep_state, Data1};
        false -> {keep_state, republish(Data1)}
    end;
handle_event(info, {tube_event, {xs_up, Conn}}, open, Data) ->
    Data1 = tube_fsm:ask(rewatch, [watch_op(Data)], Data#{conn := Conn, peer_seen := false}),
    {keep_state, republish(Data1#{republish_tries => 0})};
handle_event(state_timeout, republish, open, Data) ->
    {keep_state, republish(Data)};
handle_event(info, {tube_event, xs_down}, open, Data) ->
    {keep_state, maps:remove(tx, Data#{conn := undefined, peer_seen := false})};

%% ---- closing ---------------------------------------------------------------------

handle_event(info, {tube_event, {xs_up, Conn}}, closing, Data) ->
    remove(Data#{conn := Conn});
handle_event(state_timeout, retry, closing, Data) ->
    remove(Data);
handle_event({call, From}, wait_closed, closing, Data = #{waiters := W}) ->
    {keep_state, Data#{waiters := [From | W]}};

%% ---- in any state ---------------------------------------------------------------

%% Each batch of changes is read at once, even while an earlier read is on
%% its way: the daemon answers them in order, and the offer is seen one
%% reply sooner than if the next read waited for the last.
handle_event(info, {tube_event, peer_changed}, waiting, Data) ->
    {keep_state, read_offer(Data)};
%% The watch on the tip entry is set with the commit that creates it, and
%% its first event (which Xenstore sends for every new watch) may come
%% before or after the commit's reply: noted here, read once the entry is
%% published, so that the handshake reads the tip once for that event.
handle_event(info, {tube_event, peer_changed}, publishing, Data) ->
    tube_fsm:changes_read(),
    {keep_state, Data#{changed => true}};
handle_event(info, {tube_event, peer_changed}, _State, _Data) ->
    tube_fsm:changes_read(),
    keep_state_and_data;
handle_event({call, _From}, wait_closed, _State, _Data) ->
    {keep_state_and_data, [postpone]};
handle_event(state_timeout, deadline, State, Data) when State =/= closing ->
    fail({error, timeout}, Data);
handle_event(cast, cancel, State, Data) when State =/= open, State =/= closing ->
    closing(tube_fsm:reply_to({error, timeout}, Data));
handle_event(info, {'DOWN', Mon, process, _, _}, State, Data = #{caller := Mon})
  when State =/= open, State =/= closing ->
    closing(Data#{from := undefined});
handle_event(info, {tube_event, xs_down}, State, Data) when State =/= closing ->
    fail({error, xenstore_down}, maps:remove(tx, Data#{conn := undefined}));
handle_event(info, {tube_event, xs_down}, closing, Data) ->
    {keep_state, maps:remove(tx, Data#{conn := undefined})};
handle_event(info, {'EXIT', _, normal}, _State, _Data) ->
    keep_state_and_data;
handle_event(info, {'EXIT', _, Reason}, _State, Data) ->
    tube_fsm:log(Data, "ring job crashed", Reason),
    keep_state_and_data;
handle_event(_Type, _Event, _State, _Data) ->
    keep_state_and_data.

%% ---- replies by state ------------------------------------------------------------

replied(publishing, start, Res = #{tx := {ok, Tx}}, Data) ->
    checked(Res, Data#{tx => Tx});
replied(publishing, start, #{tx := {error, enospc}}, Data) ->
    %% Other tubes hold the connection's transactions: try again shortly.
    busy(Data);
replied(publishing, start, #{tx := E}, Data) ->
    fail(tube_fsm:error_of(transactions, E), Data);
replied(publishing, write, Res = #{commit := ok, watch := W}, Data) ->
    case {tube_paths:nock_writes_ok(Res), W} of
        {ok, ok} ->
            %% The watch's first event, or a change, came before this
            %% reply: read now; else that event comes in `waiting'.
            Data1 = maps:remove(tx, maps:remove(changed, Data#{tries := 0})),
            Data2 = case maps:get(changed, Data, false) of
                        true -> read_offer(Data1);
                        false -> Data1
                    end,
            {next_state, waiting, tube_fsm:row(waiting, Data2), tube_fsm:deadline_timeout(Data)};
        {ok, E} ->
            fail(tube_fsm:error_of(watches, E), maps:remove(tx, Data));
        {E, _} ->
            %% What was written is committed: closing removes it (the tip
            %% directory only if it was made by this tube).
            Data1 = maps:remove(tx, Data#{own_tip => maps:get(mk_tip, Res) =:= ok}),
            case E of
                {error, eacces} -> fail({error, tid_in_use}, Data1);
                _ -> fail(tube_fsm:error_of(nodes, E), Data1)
            end
    end;
replied(publishing, write, #{commit := {error, eagain}, watch := W}, Data) ->
    publish(unwatch(W, maps:remove(tx, Data)));
replied(publishing, write, #{commit := E, watch := W}, Data) ->
    fail(tube_fsm:error_of(nodes, E), unwatch(W, maps:remove(tx, Data)));
replied(waiting, offer, Res, Data) ->
    offered(Res, Data);
replied(failing, failed, Res, Data = #{error := Error}) ->
    case Res of
        #{evt := {ok, <<"error:", Why/binary>>}} -> fail({error, tip_error(Why)}, Data);
        #{state := S} when S =:= {error, enoent}; S =:= {ok, <<"6">>} -> fail(Error, Data);
        _ -> keep_state_and_data
    end;
replied(open, peer_state, #{state := S}, Data) ->
    case S of
        {ok, <<"5">>} -> tube_fsm:peer_gone(peer_closed, Data);
        {ok, <<"6">>} -> tube_fsm:peer_gone(peer_closed, Data);
        {error, enoent} -> ok;
        _ -> ok
    end,
    case S of
        {error, enoent} -> {keep_state, tube_fsm:check_domain(Data)};
        _ -> keep_state_and_data
    end;
replied(open, domain, Res, Data) ->
    {keep_state, tube_fsm:domain_checked(Res, Data)};
replied(State, announce, #{state := ok}, _Data) when State =:= handed; State =:= open ->
    keep_state_and_data;
replied(open, republish, Res, Data) ->
    republished(Res, Data);
replied(open, republish_end, #{'end' := ok}, _Data) ->
    keep_state_and_data;
replied(open, republish_end, #{'end' := {error, eagain}}, Data) ->
    {keep_state, republish(Data)};
replied(open, republish_end, #{'end' := E}, Data) ->
    {keep_state, tube_fsm:log(Data, "republishing", E)};
replied(open, rewatch, #{watch := W}, Data) ->
    W =:= ok orelse W =:= {error, eexist} orelse tube_fsm:log(Data, "watching the tip again", W),
    keep_state_and_data;
replied(closing, Purpose, Res, Data) ->
    removed(Purpose, Res, Data);
replied(State, Purpose, Res, Data) ->
    late(State, Purpose, Res, Data).

%% A reply that came after its state was left: a transaction it started is
%% ended; errors are logged.
late(_State, Purpose, Res, Data) ->
    Data1 = case Res of
                #{tx := {ok, Tx}} -> tube_fsm:ask(abort, [{abort, {transaction_end, Tx, false}}], Data);
                _ -> Data
            end,
    %% The peer's data/tip answers eacces when it is there.
    case [R || R <- maps:values(maps:remove(peer_tip_dir, Res)), R =/= ok, not tube_fsm:moot(R), element(1, R) =/= ok] of
        [] -> ok;
        Errors -> tube_fsm:log(Data, io_lib:format("late reply to ~p", [Purpose]), Errors)
    end,
    {keep_state, Data1}.

%% ---- the handshake -----------------------------------------------------------------

publish(Data = #{key := {nock, Peer, Tid}, domid := D}) ->
    Start = [{introduced, {is_domain_introduced, Peer}} | tube_paths:nock_check(D, Peer, Tid)],
    {next_state, publishing, tube_fsm:row(publishing, tube_fsm:ask(start, Start, maps:remove(changed, Data))),
     tube_fsm:deadline_timeout(Data)}.

busy(Data = #{tries := N}) ->
    Wait = rand:uniform(min(64, 1 bsl min(N, 6))),
    case tube_fsm:left(Data) of
        L when is_integer(L), L =< Wait -> fail({error, {limit, transactions}}, Data);
        _ -> {keep_state, Data#{tries := N + 1}, [{state_timeout, Wait, retry}]}
    end.

%% The peer is there and neither directory exists: both are written and
%% committed in one round trip (see tube_paths:nock_check/3).
checked(Res, Data = #{key := {nock, Peer, Tid}, domid := D, tx := Tx}) ->
    case {maps:get(introduced, Res), maps:get(nock_state, Res), maps:get(tip_nock, Res), maps:get(peer_tip_dir, Res)} of
        {{ok, true}, {error, enoent}, {error, enoent}, {error, enoent}} ->
            not_ready(Data);
        {{ok, true}, {error, enoent}, {error, enoent}, _} ->
            Batch = tube_paths:nock_publish(Tx, D, Peer, Tid) ++ [watch_op(Data)],
            {keep_state, tube_fsm:ask(write, Batch, Data)};
        {{ok, true}, {ok, _}, _, _} -> fail({error, tid_in_use}, Data);
        {{ok, true}, _, {ok, _}, _} -> fail({error, tid_in_use}, Data);
        {{ok, true}, _, {error, eacces}, _} -> fail({error, tid_in_use}, Data);
        {{ok, true}, {error, enoent}, E, _} -> fail(tube_fsm:error_of(nodes, E), Data);
        {{ok, true}, E, _, _} -> fail(tube_fsm:error_of(nodes, E), Data);
        {{ok, false}, _, _, _} -> fail({error, no_domain}, Data);
        {E, _, _, _} -> fail(tube_fsm:error_of(domain, E), Data)
    end.

%% The peer has registered but not yet made its data/tip (a node does so
%% right after registering, also after a daemon restart): its tube cannot
%% be created there yet. Tried again after a growing pause (no event says
%% when the directory appears), until the caller's deadline.
not_ready(Data = #{tx := Tx}) ->
    N = maps:get(not_ready, Data, 0),
    Data1 = tube_fsm:ask(abort, [{abort, {transaction_end, Tx, false}}], maps:remove(tx, Data)),
    {keep_state, Data1#{not_ready => N + 1}, [{{timeout, peer_ready}, min(100, 2 bsl min(N, 6)), retry}]}.

%% Covers every change told so far (tube_fsm:changes_read/0).
read_offer(Data = #{key := Key, domid := D}) ->
    tube_fsm:changes_read(),
    tube_fsm:ask(offer, tube_paths:offer_read(tube_paths:peer_node(Key, D)), maps:remove(changed, Data)).

watch_op(Data = #{key := Key, domid := D}) ->
    {watch, {watch, tube_paths:peer_node(Key, D), maps:get(token, Data)}}.

unwatch(ok, Data = #{key := Key, domid := D}) ->
    tube_fsm:ask(unwatch, [{unwatch, {unwatch, tube_paths:peer_node(Key, D), maps:get(token, Data)}}], Data);
unwatch(_, Data) ->
    Data.

offered(Res = #{state := {ok, <<"3">>}}, Data) ->
    case Res of
        #{evt := {ok, Evt}, tx_ref := {ok, TxRef}, rx_ref := {ok, RxRef}} ->
            #{key := {nock, _, Tid}} = Data,
            Data1 = tube_fsm:job(connect_job(Evt, TxRef, RxRef, Tid), Data),
            {next_state, connecting, tube_fsm:row(connecting, Data1), tube_fsm:deadline_timeout(Data)};
        _ ->
            fail({error, bad_peer_state}, Data)
    end;
offered(#{state := {ok, <<"6">>}, evt := {ok, <<"error:", Why/binary>>}}, Data) ->
    fail({error, tip_error(Why)}, Data);
offered(#{state := S}, Data) when S =:= {error, enoent}; S =:= {ok, <<"5">>}; S =:= {ok, <<"6">>} ->
    fail({error, peer_closed}, Data);
offered(_Res, _Data) ->
    keep_state_and_data.

%% What a tip that could not take the tube wrote: "limit:<what>".
tip_error(<<"limit:", What/binary>>) when What =:= <<"watches">>; What =:= <<"fds">>;
                                          What =:= <<"nodes">>; What =:= <<"transactions">> ->
    {limit, binary_to_atom(What)};
tip_error(Other) ->
    {peer_error, Other}.

%% The grant is presented from here, so that the tip answers while the job
%% that waits for its ring is being started; if that cannot be done without
%% waiting, the job does the whole connect. The ring size expected is the
%% Tid's (larger for distribution tubes); the tip's offer must match it.
connect_job(Evt, TxRef, RxRef, Tid) ->
    Timeout = tube_fsm:port_opts_timeout(),
    case tube_nif:ring_connect_start(Evt, TxRef, RxRef, Tid) of
        {ok, Connecting} -> fun() -> tube_nif:ring_connect_finish(Connecting, Timeout) end;
        {error, _} -> fun() -> tube_nif:ring_connect(Evt, TxRef, RxRef, Tid, Timeout) end
    end.

fail(Reply, Data) ->
    closing(tube_fsm:reply_to(Reply, Data)).

announce(Data = #{key := {nock, Peer, Tid}, domid := D}) ->
    Nock = tube_paths:nock(D, Peer, Tid),
    tube_fsm:ask(announce, [{state, {write, 0, [Nock, "/state"], tube_paths:state(connected)}}], Data).

%% The ring could not be mapped: the tip, which may already count the tube
%% as connected, is told with state 6 before the nodes go, and the caller
%% is answered once the tip has let go (or said why it failed: a limit of
%% its own), at most a moment later.
failing(Error, Data = #{key := {nock, Peer, Tid}, domid := D}) ->
    Nock = tube_paths:nock(D, Peer, Tid),
    Data1 = tube_fsm:ask(failed, tube_paths:offer_read(tube_paths:peer_node({nock, Peer, Tid}, D)),
                         tube_fsm:ask(closed, [{state, {write, 0, [Nock, "/state"], tube_paths:state(closed)}}], Data)),
    Linger = case tube_fsm:left(Data) of infinity -> ?LINGER; L -> min(L, ?LINGER) end,
    {next_state, failing, tube_fsm:row(failing, Data1#{error => Error}), [{state_timeout, Linger, linger}]}.

%% A ring error; `denied' while this node is out of file descriptors is
%% that limit (the descriptors the tip sent could not be received).
ring_error(Error) ->
    case tube_fsm:error_of(ring, Error) of
        {error, denied} ->
            case file:open("/dev/null", [read]) of
                {ok, F} -> file:close(F), {error, denied};
                {error, emfile} -> {error, {limit, fds}};
                {error, _} -> {error, denied}
            end;
        E ->
            E
    end.

%% ---- after a reconnection ------------------------------------------------------------

%% Writes again what this side owns (a daemon restarted without a database
%% has lost it), unless the tip entry is there, and watches the peer again.
%% Until the peer's domain has registered again this fails: it is tried
%% again on each @introduceDomain.
republish(Data = #{conn := undefined}) ->
    Data;
republish(Data) ->
    tube_fsm:ask(republish, [{tx, transaction_start}], Data#{republished => false}).

republished(Res = #{tx := {ok, Tx}}, Data = #{key := {nock, Peer, Tid}, domid := D}) when not is_map_key(tip_nock, Res) ->
    {keep_state, tube_fsm:ask(republish, tube_paths:republish_nock(Tx, D, Peer, Tid), Data#{tx => Tx})};
republished(#{tx := {error, enospc}}, Data) ->
    %% Every tube republishes at once after a reconnection: the
    %% connection's transactions are busy, one is free soon.
    {keep_state, Data, [{state_timeout, rand:uniform(50), republish}]};
republished(#{tx := E}, Data) ->
    {keep_state, tube_fsm:log(Data, "republishing: no transaction", E)};
republished(Res = #{tip_nock := TipNock}, Data = #{tx := Tx}) ->
    Commit = case {TipNock, tube_paths:nock_writes_ok(Res)} of
                 {{error, enoent}, ok} -> true;
                 _ -> false
             end,
    Done = TipNock =/= {error, enoent} orelse Commit,
    Data1 = tube_fsm:ask(republish_end, [{'end', {transaction_end, Tx, Commit}}], maps:remove(tx, Data)),
    %% A peer registers before it makes its data/tip: until then this
    %% fails, and is tried again shortly (and on each @introduceDomain).
    N = maps:get(republish_tries, Data, 0),
    case Done orelse N >= 40 of
        true -> {keep_state, Data1#{republished := Done, republish_tries => 0}};
        false -> {keep_state, Data1#{republished := Done, republish_tries => N + 1},
                  [{state_timeout, 250, republish}]}
    end;
republished(_Res, Data) ->
    {keep_state, Data}.

%% ---- closing ------------------------------------------------------------------------

closing(Data) ->
    Data1 = tube_fsm:discard(Data),
    Data2 = case Data1 of
                #{tx := Tx} -> tube_fsm:ask(abort, [{abort, {transaction_end, Tx, false}}], maps:remove(tx, Data1));
                _ -> Data1
            end,
    erlang:demonitor(maps:get(caller, Data2, make_ref()), [flush]),
    remove(tube_fsm:row(closing, Data2#{tries := 0})).

%% Removal is tried until it is done: again after a reconnection, and with
%% a growing pause after errors, which are logged.
remove(Data = #{conn := undefined}) ->
    {next_state, closing, Data};
remove(Data = #{key := Key = {nock, Peer, Tid}, domid := D}) ->
    OwnTip = maps:get(own_tip, Data, true),
    Batch = [{unwatch, {unwatch, tube_paths:peer_node(Key, D), maps:get(token, Data)}}
             | [Op || Op = {N, _} <- tube_paths:nock_remove(D, Peer, Tid), N =/= rm_tip orelse OwnTip]]
        ++ parents_batch(Data),
    {next_state, closing, tube_fsm:ask(remove, Batch, Data)}.

%% The per-peer parents go in a transaction, if they are empty: listed
%% right after it started, and removed with its commit, which fails if
%% a tube was added under them or removed from them since the start.
parents_batch(Data) ->
    [{tx, transaction_start} | parents(Data)].

removed(remove, Res, Data) ->
    case {gone(maps:get(rm_nock, Res)), gone(maps:get(rm_tip, Res, ok))} of
        {true, true} ->
            removed(parents, Res, Data);
        _ ->
            Data1 = case Res of
                        #{tx := {ok, Tx}} -> tube_fsm:ask(abort, [{abort, {transaction_end, Tx, false}}], Data);
                        _ -> Data
                    end,
            retry(Data1, "removing its nodes", maps:with([rm_nock, rm_tip], Res))
    end;
removed(parents, Res = #{tx := {ok, Tx}}, Data) ->
    Rms = [{{rm, N}, {rm, Tx, P}} || {N, {directory, _, P}} <- parents(Data), maps:get(N, Res) =:= {ok, []}],
    {keep_state, tube_fsm:ask(emptied, Rms ++ [{commit, {transaction_end, Tx, true}}], Data)};
removed(parents, #{tx := {error, closed}}, Data) ->
    {keep_state, Data};
removed(parents, #{tx := E}, Data) ->
    retry(Data, "removing its parents", E);
removed(emptied, #{commit := ok}, Data) ->
    done(Data);
removed(emptied, #{commit := {error, eagain}}, Data) ->
    {keep_state, tube_fsm:ask(parents, parents_batch(Data), Data)};
removed(emptied, #{commit := {error, closed}}, Data) ->
    {keep_state, Data};
removed(emptied, #{commit := E}, Data) ->
    retry(Data, "removing its parents", E);
removed(Purpose, Res, Data) ->
    late(closing, Purpose, Res, Data).

parents(#{key := {nock, Peer, _}, domid := D}) -> tube_paths:remove_empty(0, D, Peer).

gone(ok) -> true;
gone({error, enoent}) -> true;
gone(_) -> false.

retry(Data = #{conn := undefined}, _What, _Why) ->
    {keep_state, Data};
retry(Data, _What, Why) when Why =:= {error, closed}; Why =:= #{rm_nock => {error, closed}, rm_tip => {error, closed}} ->
    %% The connection went: removal starts again on the next one.
    {keep_state, Data, [{state_timeout, 250, retry}]};
retry(Data, What, Why) ->
    tube_fsm:retry_removal(Data, What, Why).

done(Data) ->
    tube_fsm:removal_done(Data).

terminate(_Reason, _State, Data) ->
    tube_fsm:discard(Data),
    ok.
