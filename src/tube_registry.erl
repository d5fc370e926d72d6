%% @private
%% The control plane's name for publishing this node's Erlang name: here a
%% thin front to tube_server, which does the work.
-module(tube_registry).

-export([publish_name/1]).

%% @doc Publishes Node at `/local/domain/<domid>/name' (kept across
%% reconnections to Xenstore).
-spec publish_name(node()) -> ok | {error, term()}.
publish_name(Node) -> tube_server:publish_name(Node).
