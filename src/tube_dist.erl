%% @doc Erlang distribution over tubes: `-proto_dist inet_tcp tube'.
%%
%% Nodes on this host that run tube reach each other through a reliable
%% tube (shared memory); every other node is reached by the protocol listed
%% before it (TCP). The tube's port is the distribution controller: once the
%% handshake is done, the emulator writes the distribution packets straight
%% into the driver (`outputv') and the driver hands received ones straight
%% back (`driver_output'), with no Erlang process in the data path.
%%
%% Start a node with
%% ```
%% erl -sname a -proto_dist inet_tcp tube
%% '''
%% (`tube' last: net_kernel asks the last-listed protocol first whether it
%% can reach a node, and `inet_tcp' says yes to any host). Nodes find each
%% other by name through Xenstore (each publishes its node name at
%% `/local/domain/<domid>/name'), not through epmd; the cookie handshake
%% goes over the tube as it would over TCP. `net_kernel:node_info(Node)'
%% shows `{address, #net_address{protocol = tube}}' for a tube connection.
%%
%% Connections use Tids 16#FFFF0000..16#FFFFFFFF, which `tube:accept/0,1'
%% leaves alone unless asked.
-module(tube_dist).

-export([childspecs/0, start_control_plane/0]).
-export([listen/1, listen/2, address/0, accept/1, accept_connection/5,
         setup/5, close/1, select/1, is_node_name/1, setopts/2, getopts/2]).
%% Called through funs and MFAs of the handshake and the ticker.
-export([accept_loop/1, do_accept/6, do_setup/5, tick/1, getstat/1,
         send/2, recv/3, pre_nodeup/1, post_nodeup/1]).

-include_lib("kernel/include/net_address.hrl").
-include_lib("kernel/include/dist.hrl").
-include_lib("kernel/include/dist_util.hrl").

-define(FAMILY, local).
-define(PROTOCOL, tube).
-include("tube_proto.hrl").
-define(DIST_TIDS, {?TUBE_DIST_TID_MIN, ?TUBE_DIST_TID_MAX}).
%% Before retrying an accept that failed (Xenstore restarting, say).
-define(ACCEPT_RETRY_MS, 250).
-define(DEFAULT_BUSY_POLL, 50).
%% Longest wait for a peer domain's published name when a connection starts.
-define(NAME_READ_MS, 2000).
-define(MAX_HANDSHAKE_MESSAGE, 16#FFFF).

%% ---- boot ------------------------------------------------------------------

%% @doc The control plane, started by the kernel before net_kernel when
%% `-proto_dist ... tube' is given: listen/2 needs it. The tube application,
%% started later, then finds it running and does not start a second one.
childspecs() ->
    {ok, [#{id => tube_sup,
            start => {?MODULE, start_control_plane, []},
            restart => permanent,
            shutdown => infinity,
            type => supervisor,
            modules => [tube_sup]}]}.

%% @private
start_control_plane() ->
    %% The application's environment (its defaults and sys.config) is read
    %% by the control plane: load it, without starting it.
    _ = application:load(tube),
    ok = run_pending_on_load(),
    case tube_nif:load_driver() of
        ok -> tube_sup:start_link();
        E -> E
    end.

%% A release's boot script loads every module before the kernel starts,
%% and init runs their on_load functions (tube_nif's loads the NIF library)
%% only when the kernel starts its safe supervisor, after distribution: until
%% then tube_nif cannot be called. The handlers are run here instead, for the
%% modules loaded so far; the code server they may ask is running. A node
%% started without a boot script loads tube_nif on first call, as usual.
run_pending_on_load() ->
    case erlang:module_loaded(tube_nif) of
        true -> ok;
        false -> init:run_on_load_handlers()
    end.

%% ---- listening -------------------------------------------------------------

listen(Name) ->
    {ok, Host} = inet:gethostname(),
    listen(Name, Host).

%% @doc Publishes this node's name in Xenstore, where select/1 of the other
%% nodes on this host finds it. Nothing is registered with epmd: the
%% protocol listed first does that.
listen(Name, Host) ->
    Node = list_to_atom(lists:concat([Name, "@", Host])),
    persistent_term:put({?MODULE, host}, Host),
    case catch tube_registry:publish_name(Node, [dist]) of
        Published when Published =:= ok; Published =:= {error, xenstore_down} ->
            %% Down: the name is kept and published when the link comes
            %% up (at boot, once the kernel has started the file server).
            Creation = rand:uniform(16#FFFFFFF0) + 3,
            {ok, {{tube_listen, Node}, address(Host), Creation}};
        Error ->
            {error, {tube_publish_name, Error}}
    end.

address() ->
    {ok, Host} = inet:gethostname(),
    address(Host).

address(Host) ->
    #net_address{address = {tube, catch tube:domid()}, host = Host,
                 protocol = ?PROTOCOL, family = ?FAMILY}.

close({tube_listen, _Node}) ->
    ok;
close(Port) when is_port(Port) ->
    catch erlang:port_close(Port),
    ok.

%% ---- accepting -------------------------------------------------------------

accept(_Listen) ->
    spawn_opt(?MODULE, accept_loop, [self()], [link, {priority, max}]).

%% @private Keeps one accept of a distribution Tid pending; each tube is
%% handed to net_kernel, which starts its handshake process.
accept_loop(Kernel) ->
    Opts = #{tids => ?DIST_TIDS, delivery => reliable, active => false, busy_poll => busy_poll(),
             timeout => infinity},
    case catch tube:accept(Opts) of
        {ok, Port} ->
            Kernel ! {accept, self(), Port, ?FAMILY, ?PROTOCOL},
            controller(Kernel, Port);
        _Error ->
            %% The control plane reconnects to Xenstore by itself; the
            %% acceptor must outlive that (net_kernel stops without it).
            receive after ?ACCEPT_RETRY_MS -> ok end
    end,
    ?MODULE:accept_loop(Kernel).

controller(Kernel, Port) ->
    receive
        {Kernel, controller, Pid} ->
            true = erlang:port_connect(Port, Pid),
            true = unlink(Port),
            Pid ! {self(), controller};
        {Kernel, unsupported_protocol} ->
            exit(unsupported_protocol)
    end.

accept_connection(AcceptPid, Port, MyNode, Allowed, SetupTime) ->
    spawn_opt(?MODULE, do_accept, [self(), AcceptPid, Port, MyNode, Allowed, SetupTime],
              dist_util:net_ticker_spawn_options()).

%% @private
do_accept(Kernel, AcceptPid, Port, MyNode, Allowed, SetupTime) ->
    receive
        {AcceptPid, controller} ->
            Timer = dist_util:start_timer(SetupTime),
            %% The handshake accepts only the name published for the
            %% peer's domain, if the allowed list and the test network's
            %% guard permit it.
            HSData = (hs_data(Kernel, Port, MyNode, Timer))#hs_data{
                       allowed = peer_allowed(Port, Allowed),
                       f_address = fun(P, Node) -> peer_address(P, Node) end},
            dist_util:handshake_other_started(HSData)
    end.

%% The `allowed' list of an accepted connection's handshake: the one node
%% name published at `/local/domain/<peer>/name' for the peer's domain
%% (read afresh, not from the name cache), so that a node cannot claim
%% another's name, kept only if net_kernel:allow/1 and tube_net_guard
%% permit it. A refusal is `[node()]' (an empty list would allow every
%% node, and this node never connects to itself): dist_util then answers
%% `not_allowed' and logs the name the peer claimed.
peer_allowed(Port, Allowed0) ->
    Allowed = tube_net_guard:allowed(Allowed0),
    Published = case catch tube_control:lookup(Port) of
                    {ok, #{peer := D}} -> published_name(D);
                    _ -> error
                end,
    case Published of
        {ok, Peer} ->
            case Allowed =:= [] orelse dist_util:is_allowed(Peer, Allowed) of
                true -> [Peer];
                false -> [node()]
            end;
        error ->
            [node()]
    end.

%% The node name domain D publishes now, read from Xenstore.
published_name(D) ->
    case tube_registry:conn() of
        {ok, C} ->
            case catch tube_xs:named(C, [{D, {read, 0, tube_paths:name(D)}}], ?NAME_READ_MS) of
                #{D := {ok, Name}} when Name =/= <<>> ->
                    Node = binary_to_atom(Name),
                    case split_node(Node) of
                        {ok, _, _} -> {ok, Node};
                        error -> error
                    end;
                _ ->
                    error
            end;
        _ ->
            error
    end.

%% ok if domain D publishes the name Node now; else the set-up ends.
published_as(D, Node) ->
    case published_name(D) of
        {ok, Node} -> ok;
        _ -> ?shutdown(Node)
    end.

%% The address of an accepted connection: the peer's domain, and the host
%% part of the name it gave.
peer_address(Port, Node) ->
    Domid = case catch tube_control:lookup(Port) of
                {ok, #{peer := D}} -> D;
                _ -> undefined
            end,
    #net_address{address = {tube, Domid}, host = host_of(Node),
                 protocol = ?PROTOCOL, family = ?FAMILY}.

%% ---- connecting ------------------------------------------------------------

%% @doc True only for a node on this host whose name is published in this
%% host's Xenstore: from the name cache in microseconds, or after one
%% bounded lookup. Other nodes are left to the protocols listed before, and
%% so are those a test network routes elsewhere (tube_net_guard:native/1).
select(Node) ->
    case split_node(Node) of
        {ok, _Name, Host} -> Host =:= my_host() andalso tube_net_guard:native(Node) andalso tube_names:tube_dist(Node);
        error -> false
    end.

is_node_name(Node) when is_atom(Node) ->
    split_node(Node) =/= error;
is_node_name(_) ->
    false.

%% A node the test network's guard does not permit (tube_net_guard) gets
%% a set-up process that fails at once: net_kernel takes it as an
%% unreachable node.
setup(Node, Type, MyNode, _LongOrShortNames, SetupTime) ->
    case tube_net_guard:permit(Node) of
        true ->
            spawn_opt(?MODULE, do_setup, [self(), Node, Type, MyNode, SetupTime],
                      dist_util:net_ticker_spawn_options());
        false ->
            spawn_opt(fun() -> tube_net_guard:refused(Node), exit({refused, Node}) end, [link])
    end.

%% @private
do_setup(Kernel, Node, Type, MyNode, SetupTime) ->
    Timer = dist_util:start_timer(SetupTime),
    %% The domain found for Node (perhaps from the name cache) must publish
    %% that name now: the handshake then checks that the peer says it too.
    case tube:domid(Node) of
        {ok, Domid} ->
            ok = published_as(Domid, Node),
            dist_util:reset_timer(Timer),
            Tid = element(1, ?DIST_TIDS) + erlang:unique_integer([positive]) rem 16#10000,
            Opts = #{delivery => reliable, active => false, timeout => SetupTime,
                     busy_poll => busy_poll()},
            case tube:open(Domid, Tid, Opts) of
                {ok, Port} ->
                    Address = #net_address{address = {tube, Domid}, host = host_of(Node),
                                           protocol = ?PROTOCOL, family = ?FAMILY},
                    HSData = (hs_data(Kernel, Port, MyNode, Timer))#hs_data{
                               other_node = Node,
                               other_version = ?ERL_DIST_VER_HIGH,
                               request_type = Type,
                               f_address = fun(_, _) -> Address end},
                    dist_util:handshake_we_started(HSData);
                _ ->
                    ?shutdown(Node)
            end;
        _ ->
            ?shutdown(Node)
    end.

%% What both ends of a handshake share.
hs_data(Kernel, Port, MyNode, Timer) ->
    #hs_data{kernel_pid = Kernel,
             this_node = MyNode,
             socket = Port,
             timer = Timer,
             this_flags = 0,
             f_send = fun ?MODULE:send/2,
             f_recv = fun ?MODULE:recv/3,
             f_setopts_pre_nodeup = fun ?MODULE:pre_nodeup/1,
             f_setopts_post_nodeup = fun ?MODULE:post_nodeup/1,
             f_getll = fun(P) -> {ok, P} end,
             mf_tick = fun ?MODULE:tick/1,
             mf_getstat = fun ?MODULE:getstat/1,
             mf_setopts = fun ?MODULE:setopts/2,
             mf_getopts = fun ?MODULE:getopts/2}.

%% ---- the handshake's transport --------------------------------------------

%% @private One handshake message: a message of the reliable tube.
send(Port, Data) ->
    try erlang:port_command(Port, Data) of
        true -> ok
    catch
        error:_ -> {error, closed}
    end.

%% @private The next handshake message, as a list. The tube delivers one
%% message at a time ({active, once}) so that nothing meant for the
%% emulator reaches this process once the handshake ends.
recv(Port, _Length, Timeout) ->
    case tube:setopts(Port, [{active, once}]) of
        ok ->
            receive
                {Port, {data, Bin}} ->
                    receive {tube_passive, Port} -> ok after 0 -> ok end,
                    handshake_message(Bin);
                {tube_closed, Port, _Reason} ->
                    {error, closed}
            after Timeout ->
                {error, timeout}
            end;
        {error, closed} ->
            {error, closed}
    end.

%% A handshake message is at most what {packet, 2} carries over TCP: a
%% reliable tube takes messages of up to 256 MiB, and the handshake turns
%% each into a list (16 bytes a byte).
handshake_message(Bin) when byte_size(Bin) > ?MAX_HANDSHAKE_MESSAGE ->
    {error, {handshake_message_too_long, byte_size(Bin)}};
handshake_message(Bin) ->
    {ok, binary_to_list(Bin)}.

%% @private Before erlang:setnode/3: the port becomes a distribution
%% controller (empty messages are ticks, and a dying tube takes the
%% connection down without a message); it still delivers nothing.
pre_nodeup(Port) ->
    try erlang:port_control(Port, ?TUBE_CTL_DIST, []) of
        _ -> ok
    catch
        error:badarg -> {error, closed}
    end.

%% @private After setnode: received packets go to the emulator.
post_nodeup(Port) ->
    tube:setopts(Port, [{active, true}]).

%% @private An empty message: moves the peer's receive counter.
tick(Port) ->
    catch erlang:port_command(Port, <<>>, [force]),
    ok.

%% @private {ok, Received, Sent, Pending} messages (ticks included) of the
%% connection, for the ticker.
getstat(Port) ->
    case catch erlang:port_control(Port, ?TUBE_CTL_STATS, []) of
        Bytes when is_list(Bytes), length(Bytes) =:= ?TUBE_STATS_N * 8 ->
            <<Sent:64/native, _SentB:64/native, Recv:64/native, _:56/binary,
              _Busy:64/native, _BusyUs:64/native, Queued:64/native, _/binary>> =
                list_to_binary(Bytes),
            {ok, Recv, Sent, Queued};
        _ ->
            {error, closed}
    end.

%% A tube has no socket options: those given to net_kernel:setopts/2 are
%% accepted and have no effect on tube connections.
setopts(_PortOrListen, _Opts) ->
    ok.

getopts(_Port, _Opts) ->
    {ok, []}.

%% ---- names -----------------------------------------------------------------

my_host() ->
    case persistent_term:get({?MODULE, host}, undefined) of
        undefined -> host_of(node());
        H -> H
    end.

host_of(Node) ->
    case split_node(Node) of
        {ok, _, Host} -> Host;
        error -> ""
    end.

split_node(Node) when is_atom(Node) ->
    case string:split(atom_to_list(Node), "@", trailing) of
        [Name, Host] when Name =/= [], Host =/= [] -> {ok, Name, Host};
        _ -> error
    end;
split_node(_) ->
    error.

%% The polling window of distribution tubes: the application env
%% `dist_busy_poll' (microseconds, 0..100000), default 50, as for other
%% tubes: a call's reply is found by the scheduler that sent the request
%% instead of through the event fd and a sleeping scheduler.
busy_poll() ->
    case application:get_env(tube, dist_busy_poll, ?DEFAULT_BUSY_POLL) of
        Us when is_integer(Us), Us >= 0, Us =< ?TUBE_MAX_BUSY_POLL -> Us;
        _ -> ?DEFAULT_BUSY_POLL
    end.
