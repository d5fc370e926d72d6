%% @private
%% The tube processes (tube_nock, tube_tip), one per tube and role, started
%% on demand and never restarted: a tube that fails is closed, and its
%% callers are answered by the process before it ends.
-module(tube_tubes_sup).
-behaviour(supervisor).

-export([start_link/0, start_tube/2, init/1]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec start_tube(tube_nock | tube_tip, term()) -> {ok, pid()} | {error, term()}.
start_tube(Module, Arg) ->
    supervisor:start_child(?MODULE, [Module, Arg, []]).

init([]) ->
    Tube = #{id => tube,
             start => {gen_statem, start_link, []},
             restart => temporary,
             shutdown => 1000},
    {ok, {#{strategy => simple_one_for_one, intensity => 0, period => 1}, [Tube]}}.
