defmodule TubeNet do
  @moduledoc """
  Test networks: several BEAM OS processes on this machine, meshed over
  Erlang distribution, with faults a test can inject and a log of what the
  network saw. This module mirrors the Erlang module `:tube_net`.

      {:ok, net} = TubeNet.start(nodes: 3)
      :ok = TubeNet.partition(net, [[:n1], [:n2, :n3]])
      :ok = TubeNet.expect(net, [{:partition, :_}, {:nodedown, :n2, :n1}], 5_000)
      :ok = TubeNet.heal(net)
      :ok = TubeNet.stop(net)

  Nodes have labels `:n1`..`:nN`; node `nI` is the Erlang node `nI@host`
  with domid `I` (moved past this node's own domid when that is one of
  them). Wherever a node is asked for, its label or its node name will do.
  The controller needs no distribution of its own: it drives the nodes over
  their standard I/O, which partitions leave alone.

  Events in the log are `{seq, time_us, event}`; see `events/1` for the
  events and `expect/3` for matching.
  """

  @typedoc "A running test network."
  @type net :: pid()
  @typedoc "A node: its label (`:n1`) or its Erlang node name."
  @type node_ref :: atom()

  @doc """
  Starts a network; returns once every node runs and all are connected.

  Options (a keyword list or a map): `:nodes` (required, 1..64), `:prefix`
  (`"n"`), `:domids` (a list), `:apps` (`[:tube]`, started in order in
  each node), `:code_paths` (added to this node's own, which the nodes
  always get), `:args` (more emulator arguments, strings),
  `:net_ticktime` (seconds), `:cookie`, `:boot_timeout` (ms, 30 000),
  `:env` (`[{name, value}]` set in the nodes' OS environment),
  `:carrier` (`:tube`, tube distribution between the nodes, or `:tcp`),
  `:node_opts` (a map from labels to options of that node alone, kept
  across its restarts: `:carrier`, which makes a mixed cluster, `:args`
  after the network's, `:env` over the network's),
  `:unique_names` (`false`; `true` names node `nI` `nI_<os pid>x<n>@host`
  so that runs sharing the machine's epmd never meet; labels stay),
  `:prevent_overlapping_partitions` (`false`: `:global` would otherwise
  cut connections inside the groups of a partition, which reaches the nodes
  one after the other).

  Code the nodes run must be compiled (in `lib/` or `test/support/`):
  modules defined inside a `.exs` file exist only in the test's own node.
  """
  @spec start(keyword() | map()) :: {:ok, net()} | {:error, term()}
  def start(opts) do
    opts = Map.new(opts)

    opts =
      if is_binary(opts[:prefix]),
        do: %{opts | prefix: String.to_charlist(opts.prefix)},
        else: opts

    opts = charlists(opts)

    opts =
      case opts do
        %{node_opts: per_node} when is_map(per_node) or is_list(per_node) ->
          %{opts | node_opts: Map.new(per_node, fn {l, o} -> {l, charlists(Map.new(o))} end)}

        _ ->
          opts
      end

    :tube_net.start(opts)
  end

  # args as charlists, env as {charlist, charlist} (names may be atoms).
  defp charlists(opts) do
    opts =
      if is_list(opts[:args]), do: %{opts | args: Enum.map(opts.args, &to_charlist/1)}, else: opts

    if is_list(opts[:env]),
      do: %{opts | env: Enum.map(opts.env, fn {k, v} -> {~c"#{k}", to_charlist(v)} end)},
      else: opts
  end

  @doc "Stops every node (a paused one with kill -9) and waits until their OS processes are gone; `:ok` for a network already stopped too."
  @spec stop(net()) :: :ok
  defdelegate stop(net), to: :tube_net

  @doc "The Erlang node names, in label order."
  @spec nodes(net()) :: [node()]
  defdelegate nodes(net), to: :tube_net

  @doc "The labels, in order."
  @spec labels(net()) :: [atom()]
  defdelegate labels(net), to: :tube_net

  @doc "The Erlang node name of a node."
  @spec node(net(), node_ref()) :: node()
  defdelegate node(net, ref), to: :tube_net

  @doc "The domid of a node."
  @spec domid(net(), node_ref()) :: pos_integer()
  defdelegate domid(net, ref), to: :tube_net

  @doc "The OS pid of a running or paused node: `{:ok, charlist}` or `{:error, :down}`."
  @spec os_pid(net(), node_ref()) :: {:ok, charlist()} | {:error, term()}
  defdelegate os_pid(net, ref), to: :tube_net

  @doc """
  Runs `apply(m, f, a)` in a running node over its control connection
  (across partitions too). `{:error, :paused | :down}` when the node cannot
  run it; an exception in the node is raised here.
  """
  @spec call(net(), node_ref(), module(), atom(), list(), timeout()) :: term()
  def call(net, ref, m, f, a, timeout \\ 30_000), do: :tube_net.call(net, ref, m, f, a, timeout)

  @doc """
  Cuts the network into `groups` (nodes in no group form one more group):
  distribution and raw tubes between groups are cut, both sides see
  `nodedown`, and reconnection is refused until `heal/1`.
  """
  @spec partition(net(), [[node_ref()]]) :: :ok | {:error, term()}
  defdelegate partition(net, groups), to: :tube_net

  @doc "Ends the partition and reconnects the running nodes."
  @spec heal(net()) :: :ok | {:error, term()}
  defdelegate heal(net), to: :tube_net

  @doc "SIGSTOP of the node's OS process."
  @spec pause(net(), node_ref()) :: :ok | {:error, term()}
  defdelegate pause(net, ref), to: :tube_net

  @doc "SIGCONT of a paused node."
  @spec resume(net(), node_ref()) :: :ok | {:error, term()}
  defdelegate resume(net, ref), to: :tube_net

  @doc "kill -9 of the node's OS process; returns once it is gone."
  @spec kill(net(), node_ref()) :: :ok | {:error, term()}
  defdelegate kill(net, ref), to: :tube_net

  @doc "Starts a node again (killing it first if it runs), same name and domid, and reconnects it."
  @spec restart(net(), node_ref()) :: :ok | {:error, term()}
  defdelegate restart(net, ref), to: :tube_net

  @doc "Latency in ms of packets sent with `:tube_net_link.send/2` on raw tubes between `a` and `b`."
  @spec slow(net(), node_ref(), node_ref(), non_neg_integer()) :: :ok | {:error, term()}
  defdelegate slow(net, a, b, latency), to: :tube_net

  @doc "Loss ratio (0..1) of packets sent with `:tube_net_link.send/2` on raw tubes between `a` and `b`."
  @spec loss(net(), node_ref(), node_ref(), number()) :: :ok | {:error, term()}
  defdelegate loss(net, a, b, ratio), to: :tube_net

  @doc """
  Delays the distribution traffic between `a` and `b`, both ways, by
  `latency` ms; 0 removes it.

  The link is set up anew to take the change (both sides see `nodedown`
  then `nodeup`), and the call returns once it is up again. A slowed link
  runs over TCP through a relay in one of the two nodes that holds every
  chunk of bytes for the latency, in order: messages, ticks and handshakes
  arrive late, nothing is lost. Other links keep their carrier with nothing
  in their path. There is no loss for distribution: a distribution channel
  is reliable and ordered by contract; a link that fails is `partition/2`
  or `kill/2`.
  """
  @spec slow_dist(net(), node_ref(), node_ref(), non_neg_integer()) :: :ok | {:error, term()}
  defdelegate slow_dist(net, a, b, latency), to: :tube_net

  @doc """
  Every entry of the log, oldest first, as `{seq, time_us, event}`; the
  time is when the event happened, in microseconds since the start, read
  where it happened (`:tube_net_log.now/0`, one clock for every node of the
  machine); entries are in the order they reached this node. Events:
  `{:node_up, l}`, `{:node_down, l, :killed | :stopped | :exited}`,
  `{:nodeup, l, m}`, `{:nodedown, l, m}` (l's distribution saw m come and
  go), `{:refused, l, m}`, `{:partition, groups}`, `:heal`,
  `{:paused, l}`, `{:resumed, l}`, `{:killed, l}` (the signal sent;
  `:node_down` follows once the process is gone), `{:slow, a, b, ms}`,
  `{:loss, a, b, ratio}`, `{:slow_dist, a, b, ms}`, `{:tube_up, l, m, tid}`,
  `{:tube_down, l, m, tid}`, and `:net_started` first.
  """
  @spec events(net()) :: [{pos_integer(), integer(), term()}]
  defdelegate events(net), to: :tube_net

  @doc """
  Waits until `expected` has happened, in order, after the point where the
  previous `expect/3` stopped (or after `start/1`, or `mark/1`).

  `expected` is a list of patterns and `{:unordered, [pattern]}` groups. In
  a pattern `:_` matches anything and a one-argument function matches the
  terms for which it returns `true`; tuples, lists and maps match element
  by element. Returns `:ok` or `{:error, {:timeout, not_seen, entries}}`.
  """
  @spec expect(net(), list(), timeout()) :: :ok | {:error, term()}
  defdelegate expect(net, expected, timeout), to: :tube_net

  @doc "As `expect/3`, matching the entries after sequence number `from` instead (the cursor stays)."
  @spec expect(net(), list(), timeout(), %{from: non_neg_integer()}) :: :ok | {:error, term()}
  defdelegate expect(net, expected, timeout, opts), to: :tube_net

  @doc "Moves the cursor of `expect/3` to the end of the log; returns the last sequence number."
  @spec mark(net()) :: non_neg_integer()
  defdelegate mark(net), to: :tube_net
end
