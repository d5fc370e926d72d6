%% @private
-module(tube_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    Server = #{id => tube_server,
               start => {tube_server, start_link, []},
               restart => permanent,
               shutdown => 5000},
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, [Server]}}.
