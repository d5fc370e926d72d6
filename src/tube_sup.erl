%% @private
%% The control plane: the tube processes' supervisor, then the registry.
%% The registry stops first, so that it can tell every owner
%% `{tube_closed, T, shutdown}' while the tubes are still known; and the
%% two restart together, as a registry knows its tubes only while it lives.
-module(tube_sup).
-behaviour(supervisor).

-export([start_link/0, start_link/1, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, control_plane).

%% An unregistered supervisor with no children, for an application whose
%% control plane was already started elsewhere (at boot, by the
%% distribution carrier).
start_link(empty) ->
    supervisor:start_link(?MODULE, empty).

init(control_plane) ->
    Tubes = #{id => tube_tubes_sup,
              start => {tube_tubes_sup, start_link, []},
              type => supervisor,
              shutdown => infinity},
    Registry = #{id => tube_registry,
                 start => {tube_registry, start_link, []},
                 shutdown => 5000},
    %% The receive governor starts first and stops last: the tubes it
    %% grants windows to live under the other two.
    Governor = #{id => tube_rx_governor,
                 start => {tube_rx_governor, start_link, []},
                 shutdown => 1000},
    {ok, {#{strategy => one_for_all, intensity => 5, period => 10}, [Governor, Tubes, Registry]}};
init(empty) ->
    {ok, {#{strategy => one_for_one}, []}}.
