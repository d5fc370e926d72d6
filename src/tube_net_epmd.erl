%% @doc The epmd module of a test network's nodes (`-epmd_module
%% tube_net_epmd'): OTP's `erl_epmd' for everything, except the address of
%% a node whose distribution link the network slows
%% (`tube_net:slow_dist/4'). For such a node address_please/3 starts a
%% relay ({@link tube_net_relay}) towards the node's real address and
%% answers with the relay's, so that the TCP carrier (`tube_net_tcp')
%% connects through it. Every other node gets `erl_epmd''s answer: the
%% lookup happens once per connection set-up, never on the data path.
-module(tube_net_epmd).

-export([start/0, start_link/0, stop/0, register_node/2, register_node/3,
         port_please/2, port_please/3, names/0, names/1, address_please/3,
         listen_port_please/2]).

start() -> erl_epmd:start().

start_link() -> erl_epmd:start_link().

stop() -> erl_epmd:stop().

register_node(Name, Port) -> erl_epmd:register_node(Name, Port).

register_node(Name, Port, Family) -> erl_epmd:register_node(Name, Port, Family).

port_please(Node, Host) -> erl_epmd:port_please(Node, Host).

port_please(Node, Host, Timeout) -> erl_epmd:port_please(Node, Host, Timeout).

names() -> erl_epmd:names().

names(Host) -> erl_epmd:names(Host).

listen_port_please(Name, Host) -> erl_epmd:listen_port_please(Name, Host).

%% @doc `erl_epmd:address_please/3', or the address of a relay to the node
%% Name@Host when its link is slowed: `{ok, Ip, Port, Version}'.
address_please(Name, Host, Family) ->
    case erl_epmd:address_please(Name, Host, Family) of
        {ok, Ip} = Found ->
            case tube_net_agent:dist_latency(node_name(Name, Host)) of
                0 -> Found;
                Latency -> relay(Name, Ip, Latency, Found)
            end;
        Other ->
            Other
    end.

relay(Name, Ip, Latency, Found) ->
    case erl_epmd:port_please(Name, Ip) of
        {port, Port, Version} ->
            case tube_net_relay:start({Ip, Port}, Latency) of
                {ok, {RelayIp, RelayPort}} -> {ok, RelayIp, RelayPort, Version};
                {error, _} -> Found
            end;
        _ ->
            Found
    end.

node_name(Name, Host) ->
    list_to_atom(lists:concat([Name, "@", host_part(Host)])).

%% Host as the node names of the network spell it (short names).
host_part(Host) when is_list(Host) -> Host;
host_part(Host) when is_atom(Host) -> atom_to_list(Host);
host_part(Host) -> inet:ntoa(Host).
