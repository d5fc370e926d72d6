%% @private
%% What the two tube state machines (tube_nock, tube_tip) share: Xenstore
%% requests sent without waiting and their replies read by name, ring jobs
%% run off the state machine, the tube's row in the registry's table, the
%% caller's deadline, the checks of the peer's domain, and the errors.
%%
%% Data is a map with at least `key', `conn', `domid' and `pending'
%% (Ref => {Purpose, Batch}): every request sent is remembered until its
%% reply comes, whatever state the machine is in by then, so that a
%% transaction started for a caller who gave up is still ended.
-module(tube_fsm).

-export([retry_removal/3, removal_done/1, changes_read/0]).
-export([new/3, ask/3, reply/3, replied/2, job/2, row/3, row/2, deadline_timeout/1,
         left/1, error_of/2, log/3, discard/1, reply_to/2, peer_gone/2,
         check_domain/1, domain_checked/2, port_opts_timeout/0, transient/1, gave_up/3, moot/1]).

-include_lib("kernel/include/logger.hrl").

-include("tube_proto.hrl").

new(Key, Conn, Domid) ->
    #{key => Key, conn => Conn, domid => Domid, pending => #{}, port => undefined,
      token => tube_paths:token(Key, erlang:unique_integer([positive])),
      peer_seen => false, from => undefined, deadline => infinity}.

%% Sends a named batch; its reply comes back as {reply, Purpose, Results}
%% through reply/3. Without a connection the reply is {error, closed} for
%% every op, at once.
ask(_Purpose, [], Data) ->
    Data;
ask(Purpose, Batch, Data = #{conn := undefined}) ->
    self() ! {tube_xs_reply, Ref = make_ref(), [{error, closed} || _ <- Batch]},
    remember(Ref, Purpose, Batch, Data);
ask(Purpose, Batch, Data = #{conn := C}) ->
    remember(tube_xs:send(C, Batch), Purpose, Batch, Data).

remember(Ref, Purpose, Batch, Data = #{pending := P}) ->
    Data#{pending := P#{Ref => {Purpose, Batch}}}.

%% A reply: {Purpose, Results, Data}, or `stale' for one not ours.
reply(Ref, Replies, Data = #{pending := P}) ->
    case maps:take(Ref, P) of
        {{Purpose, Batch}, P1} -> {Purpose, tube_xs:results(Batch, Replies), Data#{pending := P1}};
        error -> stale
    end.

%% What a tube's handler of a reply returned, with the reply taken off the
%% requests in flight (Data, from reply/3) even where the handler keeps its
%% data as it was: otherwise every answered request the handler ignores
%% would stay in `pending' for the tube's life, one more for each change
%% its peer makes to its entry.
replied(keep_state_and_data, Data) -> {keep_state, Data};
replied({keep_state_and_data, Actions}, Data) -> {keep_state, Data, Actions};
replied(Result, _Data) -> Result.

%% The tube is about to read its peer's state: the changes it was told of
%% and has not handled yet are all covered by that read. A change made
%% after the read was sent reaches the tube again, as a new message.
changes_read() ->
    receive
        {tube_event, peer_changed} -> changes_read()
    after 0 ->
        ok
    end.

%% Runs a blocking ring call (dirty NIF) in its own process; its result
%% comes back as {ring_done, Ref, Result}.
job(Fun, Data) ->
    Self = self(),
    Ref = make_ref(),
    spawn_link(fun() ->
        Result = try Fun() catch C:R -> {error, {C, R}} end,
        Self ! {ring_done, Ref, Result}
    end),
    Data#{job => Ref}.

%% The tube's row, read by tube:info/1 and tubes/0 without asking anyone.
row(Phase, Data = #{key := Key, port := Port}) ->
    tube_registry:put_row(Key, self(), Phase, Port),
    Data.

row(Phase, Port, Data) ->
    row(Phase, Data#{port := Port}).

%% The caller's deadline as a state timeout.
deadline_timeout(#{deadline := infinity}) -> [];
deadline_timeout(Data) -> [{state_timeout, left(Data), deadline}].

left(#{deadline := infinity}) -> infinity;
left(#{deadline := D}) -> max(0, D - erlang:monotonic_time(millisecond)).

%% How long a handed-over ring waits for its port, and ring jobs for the
%% peer: the application's open timeout.
port_opts_timeout() -> application:get_env(tube, open_timeout, 5000).

%% The documented error for a failed request: quotas become `{limit, What}'
%% (`enospc' reads as "disk full"), a lost daemon `xenstore_down'.
error_of(What, {error, enospc}) -> {error, {limit, What}};
error_of(_What, {error, closed}) -> {error, xenstore_down};
error_of(_What, {error, {io, Text}} = E) ->
    case string:find(Text, "os error 24") =/= nomatch orelse string:find(Text, "os error 23") =/= nomatch of
        true -> {error, {limit, fds}};
        false -> E
    end;
error_of(_What, {error, _} = E) -> E;
error_of(_What, Other) -> {error, Other}.

%% A lost connection is not logged per tube: the registry logs it once,
%% and every tube redoes its work on the next connection.
log(Data, _What, {error, closed}) ->
    Data;
log(Data = #{key := Key}, What, Reason) ->
    case is_list(Reason) andalso lists:all(fun(R) -> R =:= {error, closed} end, Reason) of
        true -> ok;
        false -> ?LOG_WARNING("tube ~p: ~s: ~p", [Key, What, Reason])
    end,
    Data.

discard(Data = #{handoff := Id}) ->
    _ = tube_nif:ring_discard(Id),
    maps:remove(handoff, Data);
discard(Data) ->
    Data.

%% Answers the waiting caller, if any, once.
reply_to(_Reply, Data = #{from := undefined}) ->
    Data;
reply_to(Reply, Data = #{from := From}) ->
    gen_statem:reply(From, Reply),
    Data#{from := undefined}.

%% The peer went away: the port is told to close (its owner gets
%% {tube_closed, Port, Reason} from the driver).
peer_gone(Reason, #{port := Port}) when is_port(Port) ->
    catch erlang:port_control(Port, ?TUBE_CTL_CLOSE, atom_to_list(Reason)),
    ok;
peer_gone(_Reason, _Data) ->
    ok.

%% Whether the peer's domain is still registered.
check_domain(Data = #{key := {_, Peer, _}}) ->
    ask(domain, [{introduced, {is_domain_introduced, Peer}}], Data).

%% A peer counts as gone only if it was seen registered on this connection
%% and is not any more: right after a daemon restart peers have not
%% registered again yet, and their tubes must survive that. A peer that
%% really died meanwhile is seen by the ring's hang-up.
domain_checked(#{introduced := {ok, true}}, Data) ->
    Data#{peer_seen := true};
domain_checked(#{introduced := {ok, false}}, Data = #{peer_seen := true}) ->
    peer_gone(peer_down, Data),
    Data;
domain_checked(#{introduced := {ok, false}}, Data) ->
    Data;
domain_checked(#{introduced := E}, Data) ->
    log(Data, "checking the peer's domain", E).

%% Whether a failed removal may succeed if tried again: a conflict, a
%% quota of transactions, a lost connection. Anything else (a node made
%% unremovable by another domain) is logged as an error and left.
transient({error, R}) -> lists:member(R, [eagain, enospc, closed, timeout, ebusy]);
transient(M) when is_map(M) ->
    lists:all(fun(ok) -> true;
                 ({ok, _}) -> true;
                 ({error, enoent}) -> true;
                 (E) -> transient(E)
              end, maps:values(M));
transient(_) -> false.

gave_up(#{key := Key}, What, Why) ->
    ?LOG_ERROR("tube ~p: ~s failed for good, nodes left in Xenstore: ~p", [Key, What, Why]).

%% Errors of a reply that came after its tube moved on and that need no
%% word: a node already gone, a transaction not started for want of a free
%% one, or one that conflicted, which nobody needs any more.
moot({error, R}) -> R =:= enoent orelse R =:= enospc orelse R =:= eagain;
moot(_) -> false.

%% ---- removal, shared by both roles ---------------------------------------------

%% A removal step that failed, in a tube's closing state: tried again soon
%% (`enospc': other tubes hold this connection's transactions), later with
%% a growing pause (an error a retry may mend, logged every tenth try), or
%% given up, logged as an error, when no retry can mend it.
retry_removal(Data, _What, {error, enospc}) ->
    {keep_state, Data, [{state_timeout, rand:uniform(50), retry}]};
retry_removal(Data = #{tries := N}, What, Why) ->
    case transient(Why) of
        true ->
            N > 0 andalso N rem 10 =:= 0 andalso
                log(Data, io_lib:format("~s failed (attempt ~p), retrying", [What, N + 1]), Why),
            {keep_state, Data#{tries := N + 1}, [{state_timeout, min(2000, 10 * (N + 1)), retry}]};
        false ->
            gave_up(Data, What, Why),
            removal_done(Data)
    end.

%% The tube's nodes are gone: it stops, answering whoever waits for that.
removal_done(Data = #{waiters := W}) ->
    {stop_and_reply, normal, [{reply, F, ok} || F <- W], Data}.
