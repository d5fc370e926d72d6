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
%% <li>`{Tube, {data_batch, [Binary]}}' instead of `{Tube, {data, Binary}}',
%% many packets per message in their order, on a tube in `{deliver,
%% batch}' mode (see setopts/2 and send_batch/2).</li>
%% <li>`{tube_passive, Tube}', when a tube in `{active, N}' or `{active,
%% once}' mode has delivered its last allowed packet (see setopts/2).</li>
%% <li>`{tube_closed, Tube, Reason}', sent once just before the port closes
%% by itself. Reason is `peer_closed' (the peer closed its end or its
%% process died), `peer_down' (the peer's domain was released in
%% Xenstore), `corrupt' (the shared ring broke the protocol),
%% `delivery_mismatch' (one end is reliable, the other lossy; both ends
%% close with it), `io_error' or `internal_error'. As for any port, an owner that traps
%% exits then also receives ``{'EXIT', Tube, normal}''.</li>
%% </ul>
%%
%% Sending: on a lossy tube (the default), {@link send/2} answers `{error,
%% emsgsize}' for a packet of 0 bytes or over 4096 and `{error, closed}' on a
%% closed tube, as gen_udp does. The raw port interface answers neither:
%% `port_command/2' of such a packet returns `true', sends nothing and counts
%% it as `rejected' in {@link info/1}. Either way a full ring drops the packet
%% and counts it as `dropped'; `port_command/2' on a closed tube raises
%% `badarg', as for any closed port. A reliable tube takes messages of 0 bytes
%% to 256 MiB and never drops (see open/3).
%%
%% Options are a map or a list of `{Key, Value}' (the gen_tcp habit), the
%% same for open/3, accept/1 and setopts/2; an unknown key or a bad value
%% raises `badarg'. Every `badarg' raised by this module carries OTP's
%% `error_info': the shell and Elixir's `ArgumentError' say which argument
%% is wrong and why (see format_error/2).
%%
%% A tube is handed to another process with controlling_process/2, which
%% also moves the packets already in the old owner's mailbox, in order.
-module(tube).

-export([open/1, open/2, open/3, accept/0, accept/1, close/1, domid/0, domid/1,
         peername/1, info/1, tubes/0, setopts/2]).

-export([send/2, controlling_process/2, format_error/2]).
-export([send_batch/2]).

-export_type([tube/0, domid/0, tid/0, open_opts/0, active/0, busy_poll/0, option/0]).
-export_type([delivery/0, accept_opts/0, options/1]).
-export_type([deliver/0]).

-type tube() :: port().
-type domid() :: 0..16#7FEF.
-type tid() :: 0..16#FFFFFFFF.
-type active() :: bounded | boolean() | once | pos_integer().
-type busy_poll() :: 0..100000.
-type delivery() :: lossy | reliable.
%% How packets reach the owner: one message per packet, or many (see setopts/2).
-type deliver() :: packet | batch.
-type open_opts() :: #{timeout => timeout(), active => active(), busy_poll => busy_poll(),
                       delivery => delivery(), deliver => deliver()}.
-type accept_opts() :: #{timeout => timeout(), active => active(), busy_poll => busy_poll(),
                         delivery => delivery(), deliver => deliver(), tids => {tid(), tid()}}.
-type option() :: {active, active()} | {busy_poll, busy_poll()} | {deliver, deliver()}.
%% Options as a map, or as a list of `{Key, Value}' where a later pair
%% overrides an earlier one.
-type options(Map) :: Map | [{atom(), term()}].

-include("tube_proto.hrl").

-define(MAX_DOMID, ?TUBE_MAX_DOMID).
-define(MAX_TID, ?TUBE_MAX_TID).
%% Plain accept/0,1 take Tids up to here; the rest are the distribution
%% carrier's (tube_dist).
-define(MAX_PLAIN_TID, (?TUBE_DIST_TID_MIN - 1)).
-define(MAX_BUSY_POLL, ?TUBE_MAX_BUSY_POLL).
-define(DRIVER, "tube_nif").
-define(MAX_PACKET, ?TUBE_MAX_PACKET).

%% badarg with OTP's error_info: Cause maps argument positions (or
%% `general') to what is wrong, for format_error/2. Raised from the
%% function that was called, so the stack names it with its arguments.
-define(BADARG(Args, Cause),
        erlang:error(badarg, Args, [{error_info, #{module => ?MODULE, cause => Cause}}])).

%% @doc Opens tube 0 to domain Domid.
-spec open(domid() | node()) -> {ok, tube()} | {error, term()}.
open(Node) when is_atom(Node) ->
    open(Node, 0, #{});
open(Domid) ->
    case check_domid(Domid) of
        ok -> open_checked(Domid, 0, #{});
        Bad -> ?BADARG([Domid], causes([Bad]))
    end.

%% @doc Opens tube Tid to domain Domid. The peer must call accept/0,1;
%% the order of the two calls does not matter.
-spec open(domid() | node(), tid()) -> {ok, tube()} | {error, term()}.
open(Node, Tid) when is_atom(Node) ->
    open(Node, Tid, #{});
open(Domid, Tid) ->
    case {check_domid(Domid), check_tid(Tid)} of
        {ok, ok} -> open_checked(Domid, Tid, #{});
        {D, T} -> ?BADARG([Domid, Tid], causes([D, T]))
    end.

%% @doc As open/2 with options: `timeout' (milliseconds or `infinity',
%% default the application env `open_timeout', 5000) bounds the wait for
%% the peer to accept; `active' (default `bounded' for a lossy tube,
%% `true' for a reliable one) is the tube's first delivery mode and
%% `busy_poll' (default the application env `busy_poll', 50) its polling
%% window, as in setopts/2; `delivery' is `lossy' (the default) or
%% `reliable'; `deliver' (`packet', the default, or `batch', for lossy tubes
%% only) is how received packets reach the owner, as in setopts/2. Options
%% may also be given as a list of `{Key, Value}'.
%%
%% Domid 0 is Xen's control domain, never a node: open/1,2,3 raise badarg
%% for it, as for any domid out of 1..32751 and any Tid out of
%% 0..4294967295, unknown option or bad option value.
%%
%% `delivery' (default `lossy') says what a send promises. `lossy': packets
%% of 1..4096 bytes, dropped (and counted) when the peer's ring is full.
%% `reliable': messages of any size up to 256 MiB (empty ones too), never
%% dropped, in order; when the peer's ring is full the port goes busy, so
%% `port_command' suspends the sender as on a busy socket, and it resumes
%% once the peer has drained half its ring. Both ends must use the same
%% delivery: ends that differ both close with `delivery_mismatch' before
%% anything is read. Closing a reliable tube (close/1, `port_close/1')
%% still delivers every message it accepted before: what waits for room
%% goes on into the peer's ring for up to 5 seconds after the close, and
%% the peer sees `peer_closed' after the last of them; a peer that does
%% not drain in that time loses the rest and sees `peer_closed' then.
%% Tubes with Tids 16#FFFF0000..16#FFFFFFFF (distribution) have rings of
%% 512 KiB each way; other tubes have the seed's 256 KiB region. info/1 counts `busy' (times the port went busy), `busy_us'
%% (time spent busy) and `queued_bytes' (waiting for room now).
%%
%% Errors: `{error, timeout}' (nobody accepted in time), `{error,
%% no_domain}' (no such domain in Xenstore), `{error, self}' (Domid is this
%% node), `{error, tid_in_use}' (a tube Tid to Domid exists), `{error,
%% xenstore_down}' (the daemon is unreachable; it is being reconnected),
%% `{error, {limit, What}}' (What is `nodes', `watches', `transactions' or
%% `fds': a quota of this node or of the accepting one), `{error,
%% peer_closed}', or a ring set-up error. Domid may also be an Erlang node
%% name (`name@host') published on this host: see domid/1.
-spec open(domid() | node(), tid(), options(open_opts())) -> {ok, tube()} | {error, term()}.
open(Node, Tid, Opts) when is_atom(Node) ->
    case {check_node(Node), check_tid(Tid), options(open, Opts)} of
        {ok, ok, {ok, _}} ->
            case domid(Node) of
                {ok, Domid} -> open(Domid, Tid, Opts);
                {error, not_found} -> {error, no_domain}
            end;
        {N, T, O} ->
            ?BADARG([Node, Tid, Opts], causes([N, T, O]))
    end;
open(Domid, Tid, Opts) ->
    case {check_domid(Domid), check_tid(Tid), options(open, Opts)} of
        {ok, ok, {ok, O}} -> open_checked(Domid, Tid, O);
        {D, T, O} -> ?BADARG([Domid, Tid, Opts], causes([D, T, O]))
    end.

open_checked(Domid, Tid, Opts) ->
    Timeout = timeout_opt(Opts),
    Port = port_opts(Opts),
    finish(tube_control:open(Domid, Tid, Timeout), Port).

%% @doc Waits for a tube from any domain.
-spec accept() -> {ok, tube()} | {error, term()}.
accept() -> accept(#{timeout => infinity}).

%% @doc As accept/0 with options, a map or a list of `{Key, Value}':
%% `timeout' (milliseconds or `infinity', default `infinity'), `active',
%% `busy_poll', `delivery' and `deliver' (as in open/3), and `tids', the inclusive
%% range `{Min, Max}' of Tids accepted (default all Tids but the range
%% 16#FFFF0000..16#FFFFFFFF, which the distribution carrier reserves:
%% see tube_dist). A tube is returned once its opener has mapped the
%% ring.
-spec accept(options(accept_opts())) -> {ok, tube()} | {error, term()}.
accept(Opts) ->
    case options(accept, Opts) of
        {ok, O} ->
            Timeout = maps:get(timeout, O, infinity),
            Tids = maps:get(tids, O, {0, ?MAX_PLAIN_TID}),
            Port = port_opts(O),
            finish(tube_control:accept(Tids, Timeout), Port);
        Bad ->
            ?BADARG([Opts], causes([Bad]))
    end.

%% @doc Closes both ends: the peer's owner gets `{tube_closed, T,
%% peer_closed}'. Returns `{error, closed}' if the tube is already closed.
%% Same effect as `erlang:port_close(Tube)', and it also waits until the
%% tube's Xenstore nodes are removed.
-spec close(tube()) -> ok | {error, closed}.
close(Tube) when is_port(Tube) ->
    tube_control:close(Tube);
close(Tube) ->
    ?BADARG([Tube], #{1 => not_a_tube()}).

%% @doc This node's domain id.
-spec domid() -> domid().
domid() -> tube_registry:domid().

%% @doc The domid of the node named Node on this host, as published at
%% `/local/domain/<domid>/name' (see tube_registry:publish_name/1):
%% from a cache for a known node, else from one bounded Xenstore lookup.
%% Forgotten when a domain is released.
-spec domid(node()) -> {ok, domid()} | {error, not_found}.
domid(Node) ->
    case check_node(Node) of
        ok -> tube_names:domid(Node);
        Bad -> ?BADARG([Node], causes([Bad]))
    end.

%% @doc The peer of a tube: its domid and, if it published one, its node
%% name.
-spec peername(tube()) -> {ok, {domid(), node() | undefined}} | {error, closed}.
peername(Tube) when is_port(Tube) ->
    case tube_control:lookup(Tube) of
        {ok, #{peer := Peer}} -> {ok, {Peer, tube_names:node_of(Peer)}};
        E -> E
    end;
peername(Tube) ->
    ?BADARG([Tube], #{1 => not_a_tube()}).

%% @doc What is known of an open tube: its role (`nock' if this side
%% opened it, `tip' if it accepted), peer domain, Tid, state, ring
%% counters, its `busy_poll' window and whether it is `polling' now. A
%% distribution tube also counts the large messages it handed over whole
%% after receiving them as fragments (`frags_joined') and the fragments it
%% passed on as they came because another message came between them
%% (`frags_passed_on').
-spec info(tube()) -> {ok, map()} | {error, closed}.
info(Tube) when is_port(Tube) ->
    case tube_control:lookup(Tube) of
        {ok, Desc} ->
            case counters(Tube) of
                {ok, C} -> {ok, maps:merge(maps:remove(port, Desc), C)};
                E -> E
            end;
        E ->
            E
    end;
info(Tube) ->
    ?BADARG([Tube], #{1 => not_a_tube()}).

%% @doc Sets how packets are delivered, as `{active, _}' does for sockets:
%% `bounded' (the default of a lossy tube) delivers every packet as it
%% arrives while the owner keeps up, and holds delivery while the owner's
%% mailbox is more than half the tube's depth (2 MiB of its recent average
%% packet, at most 2048, and up to twice that where the governor's
%% looks come late on a loaded machine): meanwhile packets wait
%% in the ring and, once it is full, the peer's sends drop there and are
%% counted (the peer's `dropped'), and this end counts how often and how
%% long delivery was held (`rx_held', `rx_held_us' in info/1). The owner
%% re-arms nothing: a node process, `tube_rx_governor', looks at the
%% mailbox once per half window delivered, and at a held tube when its
%% owner should have read half of it, so that a tube never puts more than
%% its depth in a mailbox (see the README). `true' delivers every packet as it arrives,
%% with no bound; `false' stops delivering; `once' delivers one packet; `N' adds N packets to what may be
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
%%
%% `{deliver, batch}' (lossy tubes only) delivers many packets per message:
%% `{Tube, {data_batch, [Packet]}}', the packets in the order they were
%% sent, each a binary of its own (a packet's boundaries are kept), up to
%% 1024 packets or 64 KiB of them per message. It moves several times more
%% packets per second than one message per packet, at a fraction of the
%% CPU per packet on the receiving node. A credit (`{active, N}' or `once')
%% still counts packets, not messages: a batch never holds more packets
%% than the credit left. `{deliver, packet}' (the default) goes back to one
%% `{Tube, {data, Packet}}' per packet. Switching either way takes effect
%% between two messages: no packet is lost or reordered. badarg on a
%% reliable tube. See send_batch/2 for sending many packets in one call.
%%
%% Options may also be given as a map. An unknown option or a bad value
%% raises badarg, and then none of the options is applied.
-spec setopts(tube(), [option()] | #{active => active(), busy_poll => busy_poll(),
                                     deliver => deliver()}) ->
          ok | {error, closed}.
setopts(Tube, Opts) ->
    case {check_port(Tube), option_list(setopts, Opts)} of
        {ok, {ok, List}} ->
            case is_tube(Tube) of
                true ->
                    case lists:member({deliver, batch}, List) andalso delivery_of(Tube) =:= reliable of
                        true -> ?BADARG([Tube, Opts], #{2 => batch_on_reliable()});
                        false -> setopts_checked(Tube, List)
                    end;
                closed -> {error, closed};
                false -> ?BADARG([Tube, Opts], #{1 => not_a_tube()})
            end;
        {P, O} ->
            ?BADARG([Tube, Opts], causes([P, O]))
    end.

%% A tube set to `bounded' delivers nothing until the receive governor
%% has looked at the owner's mailbox: tell it.
setopts_checked(Tube, List) ->
    case apply_controls(Tube, [control(O) || O <- List]) of
        ok ->
            case lists:keyfind(active, 1, lists:reverse(List)) of
                {active, bounded} -> tube_rx_governor:govern(Tube);
                _ -> ok
            end;
        E ->
            E
    end.

apply_controls(Tube, Controls) ->
    try
        lists:foreach(fun({Cmd, C}) -> erlang:port_control(Tube, Cmd, C) end, Controls)
    catch
        error:badarg -> {error, closed}
    end.

%% @doc Sends one packet, as gen_udp:send/2 does: `ok' once it is handed
%% to the tube, `{error, emsgsize}' if Packet is empty or over 4096 bytes
%% on a lossy tube, or over 256 MiB on a reliable one (nothing is sent),
%% `{error, closed}' if the tube is closed. On a lossy tube `ok' does not
%% mean the peer's ring had room (see info/1's `dropped'). Packet is any
%% iodata.
%%
%% The raw `port_command(Tube, Packet)' costs a little less and answers
%% `true' for every packet: an empty or oversize one is not sent and only
%% counted as `rejected' in info/1.
-spec send(tube(), iodata()) -> ok | {error, emsgsize | closed}.
send(Tube, Packet) when is_port(Tube) ->
    case packet_size(Packet) of
        {ok, Size} when Size >= 1, Size =< ?MAX_PACKET ->
            send_checked(Tube, Packet);
        {ok, Size} ->
            case delivery_of(Tube) of
                reliable when Size =< ?TUBE_MAX_MESSAGE -> send_checked(Tube, Packet);
                closed -> {error, closed};
                _ -> {error, emsgsize}
            end;
        error ->
            ?BADARG([Tube, Packet], #{2 => "not iodata (a binary or a list of bytes and binaries)"})
    end;
send(Tube, Packet) ->
    ?BADARG([Tube, Packet], maps:merge(#{1 => not_a_tube()}, packet_cause(Packet))).

%% @doc Sends many packets in one call, in their order: each element of
%% Packets is one packet, any iodata of 1..4096 bytes, and the boundaries
%% are kept. They go into the peer's ring together, and the peer is woken
%% at most once for all of them, which costs a fraction of one send/2 per
%% packet. Returns `{ok, Sent}': the first Sent packets are in the ring;
%% packet Sent + 1 found the ring full, and it and every packet after it
%% were dropped and counted (info/1's `dropped'). `{error, closed}' if the
%% tube is closed or its peer has gone. It works on any lossy tube,
%% whatever the receiver's `deliver'. A list of binaries reaches the
%% driver in one `erlang:port_call', whose external term format already
%% holds each binary's length: the emulator copies the packets once into
%% that buffer, in C, and the driver copies them into the ring. Other
%% iodata is framed here first and goes through one `port_control', which
%% costs more per packet.
%%
%% Raises badarg, and sends nothing, if Packets is not a proper list or
%% one of its packets is empty, over 4096 bytes or not iodata (the error
%% says which, by its position from 1), and for a reliable tube (which
%% takes messages with send/2).
-spec send_batch(tube(), [iodata()]) -> {ok, non_neg_integer()} | {error, closed}.
send_batch(Tube, Packets) when is_port(Tube) ->
    Sent = case is_tube(Tube) =:= true andalso binary_first(Packets) of
               true -> send_called(Tube, Packets);
               _ -> send_batch_framed(Tube, Packets)
           end,
    case Sent of
        {badarg, Cause} -> ?BADARG([Tube, Packets], Cause);
        _ -> Sent
    end;
send_batch(Tube, Packets) ->
    ?BADARG([Tube, Packets], #{1 => not_a_tube()}).

%% A list that starts with a binary is tried as a list of binaries; one
%% that does not (iodata packets, typically all of them) is framed at once,
%% without an encoding for port_call that the driver would only refuse.
binary_first([P | _]) -> is_binary(P);
binary_first(_) -> false.

%% A list of binaries in one port_call; anything else (iodata to frame, a
%% bad packet, a reliable or closed tube) comes back as `framed' or badarg,
%% with nothing sent, and the framed path gives the answer.
send_called(Tube, Packets) ->
    try erlang:port_call(Tube, ?TUBE_CALL_SEND_BATCH, Packets) of
        Sent when is_integer(Sent) -> {ok, Sent};
        closed -> {error, closed};
        framed -> send_batch_framed(Tube, Packets)
    catch
        error:badarg -> send_batch_framed(Tube, Packets)
    end.

send_batch_framed(Tube, Packets) ->
    try frame_batch(Packets, 1) of
        Framed ->
            case is_tube(Tube) of
                true -> send_framed(Tube, Framed);
                closed -> {error, closed};
                false -> {badarg, #{1 => not_a_tube()}}
            end
    catch
        throw:{bad_packet, Why} -> {badarg, #{2 => Why}}
    end.

send_framed(Tube, Framed) ->
    try erlang:port_control(Tube, ?TUBE_CTL_SEND_BATCH, Framed) of
        [?TUBE_SEND_BATCH_OK | Sent] ->
            <<N:32/native>> = list_to_binary(Sent),
            {ok, N};
        [?TUBE_SEND_BATCH_CLOSED | _] ->
            {error, closed}
    catch
        error:badarg ->
            case delivery_of(Tube) of
                reliable -> {badarg, #{1 => "a reliable tube: send its messages with send/2"}};
                _ -> {error, closed}
            end
    end.

%% Packets framed for the driver, <<Len:16, Packet/binary>> each, the
%% length as two bytes of the iolist (no binary to build per packet);
%% throws {bad_packet, Why} naming the first bad one.
frame_batch([P | Rest], I) when is_binary(P) ->
    S = batch_size(byte_size(P), I),
    [S bsr 8, S band 16#FF, P | frame_batch(Rest, I + 1)];
frame_batch([P | Rest], I) ->
    Size = try iolist_size(P)
           catch error:badarg -> throw({bad_packet, fmt("packet ~b is not iodata", [I])})
           end,
    S = batch_size(Size, I),
    [S bsr 8, S band 16#FF, P | frame_batch(Rest, I + 1)];
frame_batch([], _I) ->
    [];
frame_batch(_, _I) ->
    throw({bad_packet, "not a proper list of packets"}).

batch_size(Size, _I) when Size >= 1, Size =< ?MAX_PACKET -> Size;
batch_size(Size, I) -> throw({bad_packet, fmt("packet ~b is ~b bytes: packets are 1..4096 bytes", [I, Size])}).

batch_on_reliable() -> "{deliver, batch} is for lossy tubes: a reliable tube delivers whole messages".

send_checked(Tube, Packet) ->
    try erlang:port_command(Tube, Packet) of
        true -> ok
    catch
        error:badarg -> {error, closed}
    end.

%% A tube's delivery, from the fourth word of its driver command after the
%% driver's name (see finish/2), which is the port's name; only asked for
%% a packet a lossy tube would refuse.
delivery_of(Tube) ->
    case erlang:port_info(Tube, name) of
        {name, ?DRIVER ++ " " ++ Words} ->
            Reliable = integer_to_list(?TUBE_DELIVERY_RELIABLE),
            case lists:nth(4, string:lexemes(Words, " ")) of
                Reliable -> reliable;
                _ -> lossy
            end;
        _ ->
            closed
    end.

%% @doc Makes Pid the owner of Tube, as gen_tcp:controlling_process/2 does
%% for a socket: only the owner may call it. Delivery is paused while
%% the packets (`{Tube, {data, _}}'), `{tube_passive, Tube}' and
%% `{tube_closed, Tube, _}' messages already in the caller's mailbox are
%% sent on to Pid in their order; then Pid becomes the owner and the tube
%% resumes in the delivery mode it had, so Pid receives everything in
%% the order the tube delivered it. The caller is unlinked from the tube
%% and Pid is linked to it.
%%
%% Returns `{error, not_owner}' if the caller is not the owner and
%% `{error, closed}' if the tube is closed; a Pid that is the owner
%% already is `ok'.
-spec controlling_process(tube(), pid()) -> ok | {error, not_owner | closed}.
controlling_process(Tube, Pid) when is_port(Tube), is_pid(Pid) ->
    Self = self(),
    case {is_tube(Tube), erlang:port_info(Tube, connected)} of
        {false, _} -> ?BADARG([Tube, Pid], #{1 => not_a_tube()});
        {_, undefined} -> {error, closed};
        {_, {connected, Pid}} -> ok;
        {_, {connected, Self}} -> hand_over(Tube, Pid);
        {_, {connected, _}} -> {error, not_owner}
    end;
controlling_process(Tube, Pid) ->
    Causes = [case is_port(Tube) of true -> ok; false -> {bad, not_a_tube()} end,
              case is_pid(Pid) of true -> ok; false -> {bad, "not a pid"} end],
    ?BADARG([Tube, Pid], causes(Causes)).

%% @doc Says what was wrong with the arguments of a call that raised
%% `badarg', from the `error_info' this module attaches (used by the shell,
%% erl_error and Elixir's `ArgumentError').
-spec format_error(term(), erlang:stacktrace()) -> #{pos_integer() | general => string()}.
format_error(_Reason, [{_M, _F, _As, Info} | _]) ->
    ErrorInfo = proplists:get_value(error_info, Info, #{}),
    maps:get(cause, ErrorInfo, #{});
format_error(_Reason, _Stack) ->
    #{}.

%% @doc All tubes of this node and their states.
-spec tubes() -> [map()].
tubes() -> tube_control:tubes().

%% ---- internals -----------------------------------------------------------

%% The control plane has mapped the ring: open the port in the calling
%% process, which makes it the owner, and attach it. The driver's open
%% command is `tube_nif Id Credit BusyPollUs Delivery peer=Domid tid=Tid':
%% the driver reads the numbers, and the whole command is the port's name,
%% so that observer and erlang:port_info/2 show whom a tube links to.
finish({ok, Id, Tube, {_Role, Peer, Tid}}, #{credit := Credit, busy_poll := BusyPoll, delivery := Delivery} = PortOpts) ->
    Words = [Id, Credit, BusyPoll, delivery_word(Delivery)],
    Command = lists:flatten([?DRIVER, [[" ", command_word(W)] || W <- Words],
                             " peer=", integer_to_list(Peer), " tid=", integer_to_list(Tid),
                             deliver_command(PortOpts)]),
    case catch erlang:open_port({spawn_driver, Command}, [binary]) of
        Port when is_port(Port) ->
            case tube_control:attach(Tube, Port) of
                ok -> govern_bounded(Credit, Port), {ok, Port};
                E -> catch erlang:port_close(Port), E
            end;
        {'EXIT', Reason} ->
            _ = tube_nif:ring_discard(Id),
            tube_control:abort(Tube),
            {error, {open_port, Reason}}
    end;
finish(Error, _PortOpts) ->
    Error.

command_word(bounded) -> "bounded";
command_word(N) -> integer_to_list(N).

%% One setopts/2 option (already checked) as {Control, Data}.
control({active, A}) -> {?TUBE_CTL_ACTIVE, active_control(A)};
control({busy_poll, Us}) -> {?TUBE_CTL_BUSY_POLL, <<Us:32/native>>};
control({deliver, D}) -> {?TUBE_CTL_DELIVER, <<(deliver_word(D))>>}.

deliver_word(packet) -> ?TUBE_DELIVER_PACKET;
deliver_word(batch) -> ?TUBE_DELIVER_BATCH.

%% A delivery mode as {Mode, N}: Mode 0 sets no limit, 1 sets the credit
%% to N, 2 adds N to it.
active_mode(bounded) -> {?TUBE_ACTIVE_BOUNDED, 0};
active_mode(true) -> {?TUBE_ACTIVE_NO_LIMIT, 0};
active_mode(false) -> {?TUBE_ACTIVE_SET, 0};
active_mode(once) -> {?TUBE_ACTIVE_SET, 1};
active_mode(N) when is_integer(N), N > 0, N < 1 bsl 63 -> {?TUBE_ACTIVE_ADD, N}.

%% The control for an active mode: <<Mode:8, N:64/native>>.
active_control(A) ->
    {Mode, N} = active_mode(A),
    <<Mode, N:64/native>>.

%% What the open_port command carries: the first credit, the polling window
%% and the delivery.
port_opts(Opts) ->
    BusyPoll = case Opts of
                   #{busy_poll := Us} -> Us;
                   _ -> env(busy_poll, 50, fun is_busy_poll/1)
               end,
    Delivery = maps:get(delivery, Opts, lossy),
    Deliver = maps:get(deliver, Opts, packet),
    #{credit => credit_opt(Opts), busy_poll => BusyPoll, delivery => Delivery, deliver => Deliver}.

%% A tube that starts in batch mode says so with a named word of its driver
%% command (the driver looks for it wherever it stands).
deliver_command(#{deliver := batch}) -> " deliver=batch";
deliver_command(_) -> "".

delivery_word(lossy) -> ?TUBE_DELIVERY_LOSSY;
delivery_word(reliable) -> ?TUBE_DELIVERY_RELIABLE.

%% The first credit, in the open_port command: -1 is no limit, `bounded'
%% the default mode of a lossy tube (see setopts/2). A reliable tube never
%% drops, so it has no ring to let the excess drop in: its default stays
%% `true'.
credit_opt(Opts) ->
    Default = case maps:get(delivery, Opts, lossy) of
                  lossy -> bounded;
                  reliable -> true
              end,
    case active_mode(maps:get(active, Opts, Default)) of
        {?TUBE_ACTIVE_BOUNDED, _} -> bounded;
        {?TUBE_ACTIVE_NO_LIMIT, _} -> -1;
        {_, N} -> N
    end.

govern_bounded(bounded, Port) -> tube_rx_governor:govern(Port);
govern_bounded(_Credit, _Port) -> ok.

counters(Tube) ->
    case catch erlang:port_control(Tube, ?TUBE_CTL_STATS, []) of
        Bytes when is_list(Bytes), length(Bytes) =:= ?TUBE_STATS_N * 8 ->
            <<Sent:64/native, SentB:64/native, Recv:64/native, RecvB:64/native,
              Dropped:64/native, Rejected:64/native, Wakeups:64/native,
              PeerPid:64/native, BusyPoll:64/native, Polling:64/native,
              Busy:64/native, BusyUs:64/native, Queued:64/native,
              RxHeld:64/native, RxHeldUs:64/native,
              FragsJoined:64/native, FragsPassedOn:64/native>> = list_to_binary(Bytes),
            {ok, #{sent => Sent, sent_bytes => SentB, received => Recv,
                   received_bytes => RecvB, dropped => Dropped,
                   rejected => Rejected, wakeups => Wakeups,
                   peer_os_pid => case PeerPid of 0 -> undefined; P -> P end,
                   busy_poll => BusyPoll, polling => Polling =:= 1,
                   busy => Busy, busy_us => BusyUs, queued_bytes => Queued,
                   rx_held => RxHeld, rx_held_us => RxHeldUs,
                   frags_joined => FragsJoined, frags_passed_on => FragsPassedOn}};
        _ ->
            {error, closed}
    end.

timeout_opt(Opts) ->
    case Opts of
        #{timeout := T} -> T;
        _ -> env(open_timeout, 5000, fun is_timeout/1)
    end.

%% A default from the application env, read only when the option is not
%% given; a bad one is a configuration error, named as such.
env(Key, Default, Valid) ->
    V = application:get_env(tube, Key, Default),
    case Valid(V) of
        true -> V;
        false -> erlang:error({bad_application_env, tube, Key, V})
    end.

%% ---- handing a tube over ------------------------------------------------

%% Pauses delivery, moves what the caller's mailbox holds for the tube,
%% connects Pid, then restores the delivery mode: nothing the tube
%% delivers can overtake what was already queued.
hand_over(Tube, Pid) ->
    case active_now(Tube) of
        {ok, Mode} ->
            Paused = active_control(false),
            _ = (catch erlang:port_control(Tube, ?TUBE_CTL_ACTIVE, Paused)),
            Closing = move_queued(Tube, Pid, false),
            try erlang:port_connect(Tube, Pid) of
                true ->
                    unlink(Tube),
                    _ = (catch erlang:port_control(Tube, ?TUBE_CTL_ACTIVE, Mode)),
                    govern_bounded(mode_credit(Mode), Tube),
                    ok
            catch
                error:badarg when Closing -> ok;
                error:badarg -> {error, closed}
            end;
        closed ->
            {error, closed}
    end.

mode_credit(<<?TUBE_ACTIVE_BOUNDED, _/binary>>) -> bounded;
mode_credit(_) -> other.

%% The tube's delivery mode now, as the control data that sets it again:
%% the driver answers an active control of the one byte 255 with it.
active_now(Tube) ->
    case catch erlang:port_control(Tube, ?TUBE_CTL_ACTIVE, <<?TUBE_ACTIVE_QUERY>>) of
        [_ | _] = Bytes when length(Bytes) =:= 9 -> {ok, list_to_binary(Bytes)};
        _ -> closed
    end.

%% Sends Pid the tube's messages in the caller's mailbox, oldest first;
%% true if one of them says the tube is closing.
move_queued(Tube, Pid, Closing) ->
    receive
        {Tube, {data, _}} = M -> Pid ! M, move_queued(Tube, Pid, Closing);
        {Tube, {data_batch, _}} = M -> Pid ! M, move_queued(Tube, Pid, Closing);
        {tube_passive, Tube} = M -> Pid ! M, move_queued(Tube, Pid, Closing);
        {tube_closed, Tube, _} = M -> Pid ! M, move_queued(Tube, Pid, true)
    after 0 ->
        Closing
    end.

%% ---- checking arguments -------------------------------------------------

%% Options each function takes, and what each value must be.
option_keys(open) -> [timeout, active, busy_poll, delivery, deliver];
option_keys(accept) -> [timeout, active, busy_poll, delivery, deliver, tids];
option_keys(setopts) -> [active, busy_poll, deliver].

valid_option(timeout, T) -> is_timeout(T);
valid_option(active, A) -> is_active(A);
valid_option(busy_poll, Us) -> is_busy_poll(Us);
valid_option(delivery, D) -> D =:= lossy orelse D =:= reliable;
valid_option(deliver, D) -> D =:= packet orelse D =:= batch;
valid_option(tids, {Min, Max}) -> is_tid(Min) andalso is_tid(Max) andalso Min =< Max;
valid_option(tids, _) -> false.

expected(timeout) -> "milliseconds (0..4294967295) or infinity";
expected(active) -> "bounded, true, false, once or a positive integer";
expected(busy_poll) -> "microseconds, 0..100000";
expected(delivery) -> "lossy or reliable";
expected(deliver) -> "packet or batch";
expected(tids) -> "{Min, Max}, Tids with Min =< Max".

%% Options of open/3 and accept/1 as one map (a later pair of a list
%% overrides an earlier one), or {bad, Why}.
options(Kind, Opts) ->
    case option_list(Kind, Opts) of
        {ok, List} -> batch_delivery(maps:from_list(List));
        Bad -> Bad
    end.

%% Batch delivery is for lossy packets.
batch_delivery(#{delivery := reliable, deliver := batch}) -> {bad, batch_on_reliable()};
batch_delivery(Map) -> {ok, Map}.

%% Options, from a map or a list of {Key, Value}, as a checked list in
%% their order, or {bad, Why}.
option_list(Kind, Opts) when is_map(Opts) ->
    check_options(Kind, maps:to_list(Opts), []);
option_list(Kind, Opts) when is_list(Opts) ->
    check_options(Kind, Opts, []);
option_list(_Kind, _Opts) ->
    {bad, "not a map or a list of {Key, Value} options"}.

check_options(_Kind, [], Acc) ->
    {ok, lists:reverse(Acc)};
check_options(Kind, [{Key, Value} = O | Rest], Acc) ->
    case lists:member(Key, option_keys(Kind)) of
        false ->
            {bad, fmt("unknown option ~0tp (known: ~ts)", [Key, known(Kind)])};
        true ->
            case valid_option(Key, Value) of
                true -> check_options(Kind, Rest, [O | Acc]);
                false -> {bad, fmt("bad value ~0tp for ~0tp: ~ts", [Value, Key, expected(Key)])}
            end
    end;
check_options(_Kind, [Other | _], _Acc) ->
    {bad, fmt("~0tp is not a {Key, Value} option", [Other])};
check_options(_Kind, _Tail, _Acc) ->
    {bad, "not a proper list"}.

known(Kind) ->
    lists:join(", ", [atom_to_list(K) || K <- option_keys(Kind)]).

check_domid(0) ->
    {bad, "domain 0 is Xen's control domain, never a node: domids of nodes are 1..32751"};
check_domid(D) ->
    case is_domid(D) of
        true -> ok;
        false -> {bad, "not a domid (an integer in 1..32751)"}
    end.

check_tid(T) ->
    case is_tid(T) of
        true -> ok;
        false -> {bad, "not a Tid (an integer in 0..4294967295)"}
    end.

check_node(Node) ->
    case is_atom(Node) andalso is_node_name(Node) of
        true -> ok;
        false -> {bad, "not a node name (an atom Name@Host)"}
    end.

check_port(P) when is_port(P) -> ok;
check_port(_) -> {bad, not_a_tube()}.

not_a_tube() -> "not a tube (a port opened by tube:open/1,2,3 or tube:accept/0,1)".

%% Positions of the arguments that are wrong, for error_info.
causes(Checks) ->
    maps:from_list([{N, Why} || {N, {bad, Why}} <- lists:zip(lists:seq(1, length(Checks)), Checks)]).

packet_size(Packet) ->
    try {ok, iolist_size(Packet)} catch error:badarg -> error end.

packet_cause(Packet) ->
    case packet_size(Packet) of
        {ok, _} -> #{};
        error -> #{2 => "not iodata (a binary or a list of bytes and binaries)"}
    end.

%% A live port of the tube driver: true, false (another driver's) or
%% closed. Control numbers mean something else to other drivers.
is_tube(Port) ->
    case erlang:port_info(Port, name) of
        {name, ?DRIVER ++ " " ++ _} -> true;
        undefined -> closed;
        _ -> false
    end.

fmt(Format, Args) -> lists:flatten(io_lib:format(Format, Args)).

is_domid(D) -> is_integer(D) andalso D >= 1 andalso D =< ?MAX_DOMID.
is_tid(T) -> is_integer(T) andalso T >= 0 andalso T =< ?MAX_TID.
is_busy_poll(Us) -> is_integer(Us) andalso Us >= 0 andalso Us =< ?MAX_BUSY_POLL.
is_active(A) -> is_boolean(A) orelse A =:= once orelse A =:= bounded orelse (is_integer(A) andalso A > 0 andalso A < 1 bsl 63).
is_node_name(Node) -> lists:member($@, atom_to_list(Node)).
is_timeout(infinity) -> true;
is_timeout(T) -> is_integer(T) andalso T >= 0 andalso T =< 16#FFFFFFFF.
