%% @doc Tubes: shared-memory packet links between Erlang nodes on one
%% machine, found through Xenstore.
%%
%% A tube is an Erlang port. Send with `port_command(Tube, Data)' or
%% `Tube ! {self(), {command, Data}}'; the owner (the process that opened or
%% accepted it) receives each packet as `{Tube, {data, Binary}}'. Packets
%% are 1..4096 bytes. Delivery is lossy: the sender never blocks, and a
%% packet that does not fit in the peer's ring is dropped and counted. A
%% tube opened with `delivery => reliable' instead carries messages of any
%% size and never drops one (see open/3).
%%
%% Messages the owner may receive besides data:
%% <ul>
%% <li>`{tube_passive, Tube}', when a tube in `{active, N}' or `{active,
%% once}' mode has delivered its last allowed packet (see setopts/2).</li>
%% <li>`{tube_closed, Tube, Reason}', sent once just before the port closes
%% by itself. Reason is `peer_closed' (the peer closed its end or its
%% process died), `peer_down' (the peer's domain was released in
%% Xenstore), `corrupt' (the shared ring broke the protocol),
%% `io_error' or `internal_error'. As for any port, an owner that traps
%% exits then also receives `{'EXIT', Tube, normal}'.</li>
%% </ul>
%%
%% Bad input: a packet of 0 bytes or over 4096 is not sent and is counted
%% as `rejected' in {@link info/1}; a full ring drops and counts `dropped';
%% sending on a closed tube raises `badarg' (as for any closed port);
%% functions given arguments of the wrong type or range raise `badarg'.
-module(tube).

-export([open/1, open/2, open/3, accept/0, accept/1, close/1, domid/0, domid/1,
         info/1, tubes/0, setopts/2]).

-export_type([tube/0, domid/0, tid/0, open_opts/0, active/0, busy_poll/0, option/0,
              delivery/0]).

-type tube() :: port().
-type domid() :: 0..16#7FEF.
-type tid() :: 0..16#FFFFFFFF.
-type active() :: boolean() | once | pos_integer().
-type busy_poll() :: 0..100000.
-type delivery() :: lossy | reliable.
-type open_opts() :: #{timeout => timeout(), active => active(), busy_poll => busy_poll(),
                       delivery => delivery()}.
-type option() :: {active, active()} | {busy_poll, busy_poll()}.

-define(MAX_DOMID, 16#7FEF).
-define(MAX_TID, 16#FFFFFFFF).
-define(TUBE_CTL_STATS, 1).
-define(TUBE_CTL_ACTIVE, 3).
-define(TUBE_CTL_BUSY_POLL, 4).
-define(MAX_BUSY_POLL, 100000).
-define(DRIVER, "tube_nif").

%% @doc Opens tube 0 to domain Domid.
-spec open(domid()) -> {ok, tube()} | {error, term()}.
open(Domid) -> open(Domid, 0).

%% @doc Opens tube Tid to domain Domid. The peer must call accept/0,1;
%% the order of the two calls does not matter.
-spec open(domid(), tid()) -> {ok, tube()} | {error, term()}.
open(Domid, Tid) -> open(Domid, Tid, #{}).

%% @doc As open/2 with options: `timeout' (milliseconds or `infinity',
%% default the application env `open_timeout', 5000) bounds the wait for
%% the peer to accept; `active' (default `true') is the tube's first
%% delivery mode and `busy_poll' (default the application env `busy_poll',
%% 50) its polling window, as in setopts/2.
%%
%% `delivery' (default `lossy') says what a send promises. `lossy': packets
%% of 1..4096 bytes, dropped (and counted) when the peer's ring is full.
%% `reliable': messages of any size up to 256 MiB (empty ones too), never
%% dropped, in order; when the peer's ring is full the port goes busy, so
%% `port_command' suspends the sender as on a busy socket, and it resumes
%% once the peer has drained half its ring. Both ends must use the same
%% delivery. info/1 counts `busy' (times the port went busy), `busy_us'
%% (time spent busy) and `queued_bytes' (waiting for room now).
%%
%% Errors: `{error, timeout}' (nobody accepted in time), `{error,
%% no_domain}' (no such domain in Xenstore), `{error, self}' (Domid is this
%% node), `{error, tid_in_use}' (a tube Tid to Domid exists), `{error,
%% xenstore_down}' (the daemon is unreachable; it is being reconnected), or
%% a ring set-up error.
-spec open(domid(), tid(), open_opts()) -> {ok, tube()} | {error, term()}.
open(Domid, Tid, Opts) ->
    check(is_domid(Domid) andalso is_tid(Tid) andalso is_map(Opts)),
    Timeout = timeout_opt(Opts),
    Port = port_opts(Opts),
    finish(tube_server:open(Domid, Tid, Timeout), Port).

%% @doc Waits for a tube from any domain.
-spec accept() -> {ok, tube()} | {error, term()}.
accept() -> accept(#{timeout => infinity}).

%% @doc As accept/0 with options: `timeout' (milliseconds or `infinity',
%% default `infinity'), `active', `busy_poll' and `delivery' (as in open/3).
-spec accept(#{timeout => timeout(), active => active(), busy_poll => busy_poll(),
               delivery => delivery(), tids => {tid(), tid()}}) ->
          {ok, tube()} | {error, term()}.
accept(Opts) when is_map(Opts) ->
    Timeout = maps:get(timeout, Opts, infinity),
    check(is_timeout(Timeout)),
    Port = port_opts(Opts),
    Tids = maps:get(tids, Opts, {0, ?MAX_TID - 16#10000}),
    check(is_tid_range(Tids)),
    finish(tube_server:accept(Timeout, Tids), Port);
accept(_) ->
    erlang:error(badarg).

%% @doc Closes both ends: the peer's owner gets `{tube_closed, T,
%% peer_closed}'. Returns `{error, closed}' if the tube is already closed.
%% Same effect as `erlang:port_close(Tube)', and it also waits until the
%% tube's Xenstore nodes are removed.
-spec close(tube()) -> ok | {error, closed}.
close(Tube) when is_port(Tube) ->
    tube_server:close(Tube);
close(_) ->
    erlang:error(badarg).

%% @doc This node's domain id.
-spec domid() -> domid().
domid() -> tube_server:domid().

%% @doc The domain of the node named Node on this host (its name published in
%% Xenstore at `/local/domain/<domid>/name'): from a cache for a known node,
%% else after one Xenstore lookup; `{error, not_found}' if no domain has
%% that name.
-spec domid(node()) -> {ok, domid()} | {error, not_found}.
domid(Node) when is_atom(Node) -> tube_server:domid_of(Node);
domid(_) -> erlang:error(badarg).

%% @doc What is known of an open tube: its role (`nock' if this side
%% opened it, `tip' if it accepted), peer domain, Tid, state, ring
%% counters, its `busy_poll' window and whether it is `polling' now.
-spec info(tube()) -> {ok, map()} | {error, closed}.
info(Tube) when is_port(Tube) ->
    case tube_server:lookup(Tube) of
        {ok, Desc} ->
            case counters(Tube) of
                {ok, C} -> {ok, maps:merge(maps:remove(port, Desc), C)};
                E -> E
            end;
        E ->
            E
    end;
info(_) ->
    erlang:error(badarg).

%% @doc Sets how packets are delivered, as `{active, _}' does for sockets:
%% `true' (the default) delivers every packet as it arrives; `false' stops
%% delivering; `once' delivers one packet; `N' adds N packets to what may be
%% delivered. When a tube in `once' or `N' mode has delivered its last
%% allowed packet, the owner gets `{tube_passive, Tube}'. While a tube
%% delivers nothing, packets wait in its ring, and once the ring is full the
%% peer's sends are dropped (and counted on the peer's side) rather than
%% piling up in the owner's mailbox: a receiver that cannot keep up bounds
%% its memory this way. A passive tube whose peer leaves closes with
%% `peer_closed' without delivering what was left in the ring.
%%
%% `{busy_poll, Us}' (0..100000 microseconds, default 50) is how long the
%% tube polls its ring for a reply after it sends, once the peer has been
%% answering: a reply found by polling reaches the owner in a few
%% microseconds, where waking through the event fd and a sleeping scheduler
%% takes tens. A window that passes without a packet ends polling until
%% packets arrive again, so a one-way stream and an idle tube never poll.
%% 0 turns polling off.
-spec setopts(tube(), [option()]) -> ok | {error, closed}.
setopts(Tube, Opts) when is_port(Tube), is_list(Opts) ->
    Controls = [control(O) || O <- Opts],
    %% Control numbers mean something else to other drivers: only tubes.
    case erlang:port_info(Tube, name) of
        {name, ?DRIVER ++ " " ++ _} ->
            try
                lists:foreach(fun({Cmd, C}) -> erlang:port_control(Tube, Cmd, C) end, Controls)
            catch
                error:badarg -> {error, closed}
            end;
        undefined ->
            {error, closed};
        _ ->
            erlang:error(badarg)
    end;
setopts(_, _) ->
    erlang:error(badarg).

%% @doc All tubes of this node and their states.
-spec tubes() -> [map()].
tubes() -> tube_server:tubes().

%% ---- internals -----------------------------------------------------------

%% The control plane has mapped the ring: open the port in the calling
%% process, which makes it the owner, and attach it. The driver's open
%% command is `tube_nif Id Credit BusyPollUs Delivery'.
finish({ok, Id, Key}, #{credit := Credit, busy_poll := BusyPoll, delivery := Delivery}) ->
    Words = [Id, Credit, BusyPoll, delivery_word(Delivery)],
    Command = lists:flatten([?DRIVER | [[" ", integer_to_list(W)] || W <- Words]]),
    case catch erlang:open_port({spawn_driver, Command}, [binary]) of
        Port when is_port(Port) ->
            case tube_server:attach(Key, Port) of
                ok -> {ok, Port};
                E -> catch erlang:port_close(Port), E
            end;
        {'EXIT', Reason} ->
            _ = tube_nif:ring_discard(Id),
            ok = tube_server:abort(Key),
            {error, {open_port, Reason}}
    end;
finish(Error, _PortOpts) ->
    Error.

%% One setopts/2 option as {Control, Data}.
control({active, A}) -> {?TUBE_CTL_ACTIVE, active_control(A)};
control({busy_poll, Us}) -> check(is_busy_poll(Us)), {?TUBE_CTL_BUSY_POLL, <<Us:32/native>>};
control(_) -> erlang:error(badarg).

%% A delivery mode as {Mode, N}: Mode 0 sets no limit, 1 sets the credit
%% to N, 2 adds N to it.
active_mode(true) -> {0, 0};
active_mode(false) -> {1, 0};
active_mode(once) -> {1, 1};
active_mode(N) when is_integer(N), N > 0, N < 1 bsl 63 -> {2, N};
active_mode(_) -> erlang:error(badarg).

%% The control for an active mode: <<Mode:8, N:64/native>>.
active_control(A) ->
    {Mode, N} = active_mode(A),
    <<Mode, N:64/native>>.

%% What the open_port command carries: the first credit, the polling window
%% and the delivery.
port_opts(Opts) ->
    BusyPoll = maps:get(busy_poll, Opts, application:get_env(tube, busy_poll, 50)),
    check(is_busy_poll(BusyPoll)),
    Delivery = maps:get(delivery, Opts, lossy),
    check(Delivery =:= lossy orelse Delivery =:= reliable),
    #{credit => credit_opt(Opts), busy_poll => BusyPoll, delivery => Delivery}.

delivery_word(lossy) -> 0;
delivery_word(reliable) -> 1.

%% The first credit, in the open_port command: -1 is no limit.
credit_opt(Opts) ->
    case active_mode(maps:get(active, Opts, true)) of
        {0, _} -> -1;
        {_, N} -> N
    end.

counters(Tube) ->
    case catch erlang:port_control(Tube, ?TUBE_CTL_STATS, []) of
        Bytes when is_list(Bytes), length(Bytes) =:= 104 ->
            <<Sent:64/native, SentB:64/native, Recv:64/native, RecvB:64/native,
              Dropped:64/native, Rejected:64/native, Wakeups:64/native,
              PeerPid:64/native, BusyPoll:64/native, Polling:64/native,
              Busy:64/native, BusyUs:64/native, Queued:64/native>> = list_to_binary(Bytes),
            {ok, #{sent => Sent, sent_bytes => SentB, received => Recv,
                   received_bytes => RecvB, dropped => Dropped,
                   rejected => Rejected, wakeups => Wakeups,
                   peer_os_pid => case PeerPid of 0 -> undefined; P -> P end,
                   busy_poll => BusyPoll, polling => Polling =:= 1,
                   busy => Busy, busy_us => BusyUs, queued_bytes => Queued}};
        _ ->
            {error, closed}
    end.

timeout_opt(Opts) ->
    T = maps:get(timeout, Opts, application:get_env(tube, open_timeout, 5000)),
    check(is_timeout(T)),
    T.

is_domid(D) -> is_integer(D) andalso D >= 0 andalso D =< ?MAX_DOMID.
is_tid(T) -> is_integer(T) andalso T >= 0 andalso T =< ?MAX_TID.
is_tid_range({Min, Max}) -> is_tid(Min) andalso is_tid(Max) andalso Min =< Max;
is_tid_range(_) -> false.
is_busy_poll(Us) -> is_integer(Us) andalso Us >= 0 andalso Us =< ?MAX_BUSY_POLL.
is_timeout(infinity) -> true;
is_timeout(T) -> is_integer(T) andalso T >= 0 andalso T =< 16#FFFFFFFF.

check(true) -> ok;
check(false) -> erlang:error(badarg).
