%% @doc Erlang distribution over TCP (`inet_tcp_dist') that obeys the test
%% network's partitions: `-proto_dist tube_net_tcp'.
%%
%% Every call goes to `inet_tcp_dist' except two, which first ask
%% {@link tube_net_guard:permit/1}:
%% <ul>
%% <li>setup/5, net_kernel's request to connect to a node: a node not
%% permitted gets a set-up process that fails at once, so
%% `net_kernel:connect_node/1' answers `false' and a send to that node is
%% dropped as for an unreachable node;</li>
%% <li>accept_connection/5: the `allowed' list given to the handshake is
%% narrowed to the permitted nodes ({@link tube_net_guard:allowed/1}), so
%% the handshake refuses a blocked node by name with `not_allowed', the
%% answer OTP gives a node outside `net_kernel:allow/1'.</li>
%% </ul>
%% Either side refusing is enough, so a partition holds even while only one
%% side has learnt of it.
-module(tube_net_tcp_dist).

-export([listen/1, listen/2, accept/1, accept_connection/5, setup/5, close/1,
         select/1, address/0, is_node_name/1, setopts/2, getopts/2]).

listen(Name) -> inet_tcp_dist:listen(Name).

listen(Name, Host) -> inet_tcp_dist:listen(Name, Host).

accept(Listen) -> inet_tcp_dist:accept(Listen).

accept_connection(AcceptPid, Socket, MyNode, Allowed, SetupTime) ->
    inet_tcp_dist:accept_connection(AcceptPid, Socket, MyNode,
                                    tube_net_guard:allowed(Allowed), SetupTime).

setup(Node, Type, MyNode, LongOrShortNames, SetupTime) ->
    case tube_net_guard:permit(Node) of
        true -> inet_tcp_dist:setup(Node, Type, MyNode, LongOrShortNames, SetupTime);
        false -> refuse(Node)
    end.

close(Listen) -> inet_tcp_dist:close(Listen).

select(Node) -> inet_tcp_dist:select(Node).

address() -> inet_tcp_dist:address().

is_node_name(Node) -> inet_tcp_dist:is_node_name(Node).

setopts(Listen, Opts) -> inet_tcp_dist:setopts(Listen, Opts).

getopts(Listen, Opts) -> inet_tcp_dist:getopts(Listen, Opts).

%% net_kernel links to the set-up process and takes its exit before any
%% handshake as a failed connection.
refuse(Node) ->
    spawn_opt(fun() ->
                      tube_net_guard:refused(Node),
                      exit({refused, Node})
              end, [link]).
