%% @private
%% The tube processes (tube_nock, tube_tip), one per tube and role, started
%% on demand and never restarted: a tube that fails is closed, and its
%% callers are answered by the process before it ends.
%%
%% A tube starts without the supervisor waiting for its init: init only
%% sets up the process's data (every step that can fail comes after it, as
%% an event, and is answered to the caller), so the supervisor, which
%% starts every tube of the node, and open/3 and the registry, which ask
%% it to, go on at once.
-module(tube_tubes_sup).
-behaviour(supervisor).

-export([start_link/0, start_tube/2, init/1]).
-export([spawn_tube/2, enter/2]).

start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec start_tube(tube_nock | tube_tip, term()) -> {ok, pid()} | {error, term()}.
start_tube(Module, Arg) ->
    supervisor:start_child(?MODULE, [Module, Arg]).

init([]) ->
    Tube = #{id => tube,
             start => {?MODULE, spawn_tube, []},
             restart => temporary,
             shutdown => 1000},
    {ok, {#{strategy => simple_one_for_one, intensity => 0, period => 1}, [Tube]}}.

%% Runs in the supervisor: the tube is linked to it, and it is the tube's
%% parent (gen_statem ends the tube when the supervisor shuts it down).
spawn_tube(Module, Arg) ->
    {ok, proc_lib:spawn_link(?MODULE, enter, [Module, Arg])}.

enter(Module, Arg) ->
    {ok, State, Data, Actions} = Module:init(Arg),
    gen_statem:enter_loop(Module, [], State, Data, Actions).
