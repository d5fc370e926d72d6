defmodule DistTest.Node do
  @moduledoc false
  # Distributed BEAM OS processes for the distribution tests. Each node is
  # started with OTP's :peer and driven over its standard I/O (the test node
  # itself stays undistributed); the nodes reach each other through
  # tube_dist (`-proto_dist inet_tcp tube`) or, for a TCP-only node, through
  # inet_tcp alone. The functions below the start/stop helpers run inside
  # the nodes, through `call/4`.

  import Bitwise

  @cookie "tube_dist_test"

  @doc """
  Starts node `name` on this host. Options: `tube: false` for a TCP-only
  node, `ticktime: seconds`. Returns %{peer, node, os_pid}.
  """
  def start(name, opts \\ []) do
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    proto = if Keyword.get(opts, :tube, true), do: [~c"-proto_dist", ~c"inet_tcp", ~c"tube"], else: []
    tick = case opts[:ticktime] do
      nil -> []
      t -> [~c"-kernel", ~c"net_ticktime", ~c"#{t}"]
    end

    args = paths ++ proto ++ tick ++ [~c"-setcookie", ~c"#{@cookie}"]

    env = for {k, v} <- Keyword.get(opts, :env, []), do: {~c"#{k}", ~c"#{v}"}

    {:ok, peer, node} =
      :peer.start(%{name: name, connection: :standard_io, args: args, env: env, wait_boot: 60_000})

    os_pid = :peer.call(peer, :os, :getpid, []) |> List.to_integer()
    %{peer: peer, node: node, os_pid: os_pid}
  end

  @doc "Runs m:f(a) in the node."
  def call(%{peer: peer}, m, f, a, timeout \\ 120_000), do: :peer.call(peer, m, f, a, timeout)

  @doc "Stops the node (if it still runs)."
  def stop(%{peer: peer}) do
    try do
      :peer.stop(peer)
    catch
      _, _ -> :ok
    end
  end

  @doc "Sends signal `sig` (\"KILL\", \"STOP\", \"CONT\") to the node's OS process."
  def signal(%{os_pid: os_pid}, sig) do
    {_, 0} = System.cmd("kill", ["-#{sig}", Integer.to_string(os_pid)])
    :ok
  end

  # ---- run inside the nodes -------------------------------------------------

  @doc "Pings `node`; then the carrier of the connection (:tube or :tcp)."
  def connect(node) do
    case :net_adm.ping(node) do
      :pong -> {:pong, carrier(node)}
      :pang -> :pang
    end
  end

  @doc "The protocol of the connection to `node`, from net_kernel:node_info/1."
  def carrier(node) do
    {:ok, info} = :net_kernel.node_info(node)
    {:net_address, _addr, _host, proto, _family} = Keyword.fetch!(info, :address)
    proto
  end

  @doc "Registers :dist_echo, which sends every {from, term} back to from as {:echo, term}."
  def start_echo do
    pid = spawn(fn -> echo_loop() end)
    Process.register(pid, :dist_echo)
    :ok
  end

  defp echo_loop do
    receive do
      {from, term} ->
        send(from, {:echo, term})
        echo_loop()
    end
  end

  @doc "Sends each term to `node`'s :dist_echo and checks the echo is equal. Returns :ok or the first mismatch."
  def echo_all(node, terms) do
    Enum.reduce_while(terms, :ok, fn term, :ok ->
      send({:dist_echo, node}, {self(), term})

      receive do
        {:echo, ^term} -> {:cont, :ok}
        {:echo, other} -> {:halt, {:mismatch, term, other}}
      after
        120_000 -> {:halt, {:timeout, term}}
      end
    end)
  end

  @doc "echo_all/2 of sample_terms/1, made in this node (a peer's answer crosses a pipe)."
  def echo_samples(node, sizes), do: echo_all(node, sample_terms(sizes))

  @doc "Terms of every type (with pids, refs and funs of this node) and binaries of the given sizes."
  def sample_terms(sizes) do
    port = hd(:erlang.ports())
    base = [
      :atom, :"ütf8 åtom", 0, -1, 255, 256, 1 <<< 27, -(1 <<< 27), 1 <<< 64, -(1 <<< 200),
      1.5, -0.0, 1.0e300, "", "text", <<1::3>>, <<255, 0, 1::5>>, [], [1 | 2], ~c"chars",
      {}, {:a, {:b, [:c]}}, %{}, %{a: 1, b: [2]}, Map.new(1..100, &{&1, &1}),
      self(), make_ref(), port, fn x -> x + 1 end, &:lists.reverse/1,
      Enum.to_list(1..10_000), List.duplicate({:x, "y"}, 1000)
    ]

    bins = for s <- sizes, do: :binary.copy(<<s::32>>, div(s, 4)) <> :binary.copy(<<7>>, rem(s, 4))
    # A sub-binary that starts off a byte boundary inside a larger one.
    sub = binary_part(:binary.copy(<<1, 2, 3>>, 100_000), 3, 200_000)
    base ++ bins ++ [sub]
  end

  @doc "Registers :dist_count, which checks that {:seq, i} arrive in order from 0, then answers {:done, from} with {:counted, n, in_order}."
  def start_counter do
    pid = spawn(fn -> count_loop(0, true) end)
    Process.register(pid, :dist_count)
    :ok
  end

  defp count_loop(n, ok) do
    receive do
      {:seq, i} -> count_loop(n + 1, ok and i == n)
      {:done, from} -> send(from, {:counted, n, ok})
    end
  end

  @doc "Sends {:seq, 0..n-1} to `node`'s :dist_count, then asks for its count."
  def flood(node, n) do
    dest = {:dist_count, node}
    for i <- 0..(n - 1), do: send(dest, {:seq, i})
    send(dest, {:done, self()})

    receive do
      {:counted, count, in_order} -> {count, in_order}
    after
      600_000 -> :timeout
    end
  end

  @doc "Starts a registered counter agent :dist_agent."
  def start_agent do
    {:ok, _} = Agent.start(fn -> 0 end, name: :dist_agent)
    :ok
  end

  @doc "n gen_server calls to `node`'s :dist_agent, each adding one; returns the last answer."
  def agent_calls(node, n) do
    Enum.reduce(1..n, nil, fn _, _ ->
      Agent.get_and_update({:dist_agent, node}, fn v -> {v + 1, v + 1} end)
    end)
  end

  @doc "Links and monitors across nodes; returns what arrived."
  def links_and_monitors(node) do
    Process.flag(:trap_exit, true)
    # A monitor sees a remote process killed.
    p1 = Node.spawn(node, Process, :sleep, [:infinity])
    ref = Process.monitor(p1)
    Process.exit(p1, :kill)
    down = receive do
      {:DOWN, ^ref, :process, ^p1, reason} -> reason
    after
      60_000 -> :no_down
    end

    # A link carries a remote process's exit reason.
    p2 = Node.spawn_link(node, :erlang, :exit, [:boom])
    exit = receive do
      {:EXIT, ^p2, reason} -> reason
    after
      60_000 -> :no_exit
    end

    # A monitor of a registered name that does not exist.
    ref3 = Process.monitor({:no_such_name, node})
    noproc = receive do
      {:DOWN, ^ref3, :process, _, reason} -> reason
    after
      60_000 -> :no_down
    end

    Process.flag(:trap_exit, false)
    {down, exit, noproc}
  end

  @doc "Starts :dist_watch, which monitors `node` and a process there, and records when each goes down."
  def watch(node) do
    parent = self()

    pid = spawn(fn ->
      :ok = :net_kernel.monitor_nodes(true)
      remote = Node.spawn(node, Process, :sleep, [:infinity])
      ref = Process.monitor(remote)
      send(parent, :watching)
      watch_loop(node, ref, %{})
    end)

    receive do
      :watching -> :ok
    after
      60_000 -> :timeout
    end

    Process.register(pid, :dist_watch)
    :ok
  end

  defp watch_loop(node, ref, seen) do
    receive do
      {:nodedown, ^node} -> watch_loop(node, ref, Map.put(seen, :nodedown, now()))
      {:DOWN, ^ref, :process, _, reason} -> watch_loop(node, ref, Map.put(seen, {:down, reason}, now()))
      {:since, from, t0} -> wait_both(node, ref, seen, from, t0)
      {:seen_now, from} -> send(from, {:seen, seen}) && watch_loop(node, ref, seen)
      _ -> watch_loop(node, ref, seen)
    end
  end

  defp wait_both(node, ref, seen, from, t0) do
    if map_size(seen) >= 2 do
      send(from, {:seen, Map.new(seen, fn {k, t} -> {k, t - t0} end)})
    else
      receive do
        {:nodedown, ^node} -> wait_both(node, ref, Map.put(seen, :nodedown, now()), from, t0)
        {:DOWN, ^ref, :process, _, r} -> wait_both(node, ref, Map.put(seen, {:down, r}, now()), from, t0)
      end
    end
  end

  defp now, do: System.monotonic_time(:millisecond)

  @doc "The clock :dist_watch uses."
  def clock, do: now()

  @doc "Waits until :dist_watch saw the node and its process go down; the milliseconds since `t0` for each."
  def watched(t0) do
    send(:dist_watch, {:since, self(), t0})

    receive do
      {:seen, seen} -> seen
    after
      120_000 -> :timeout
    end
  end

  @doc "What :dist_watch has seen so far (without waiting)."
  def watched_now do
    send(:dist_watch, {:seen_now, self()})

    receive do
      {:seen, seen} -> seen
    after
      60_000 -> :timeout
    end
  end

  @doc "Registers a process under `name` in :global; returns it."
  def global_register(name) do
    pid = spawn(fn -> Process.sleep(:infinity) end)
    :yes = :global.register_name(name, pid)
    pid
  end

  @doc "Where :global says `name` is, after syncing with the other nodes."
  def global_whereis(name) do
    :ok = :global.sync()
    :global.whereis_name(name)
  end

  @doc "Starts pg scope :dist_pg; joins a new process to `group` if asked. Returns the process."
  def pg_join(group) do
    {:ok, _} = :pg.start(:dist_pg)
    pid = spawn(fn -> Process.sleep(:infinity) end)
    :ok = :pg.join(:dist_pg, group, pid)
    pid
  end

  def pg_start do
    {:ok, _} = :pg.start(:dist_pg)
    :ok
  end

  @doc "The members of `group` in scope :dist_pg, once there are `n` of them."
  def pg_members(group, n) do
    wait = fn wait, tries ->
      m = :pg.get_members(:dist_pg, group)

      cond do
        length(m) >= n -> m
        tries == 0 -> m
        true -> Process.sleep(20) && wait.(wait, tries - 1)
      end
    end

    wait.(wait, 3_000)
  end

  @doc "The nodes this node is connected to."
  def nodes, do: Node.list()

  @doc "Counters of this node's tubes (distribution ones included)."
  def tubes, do: for(%{port: p} <- :tube.tubes(), {:ok, i} = :tube.info(p), do: i)

  # ---- large messages from many processes ----------------------------------------

  @doc """
  Registers :dist_collect, which checks what burst/4 sends: each sender's
  messages in order, every payload and atom as made, and answers {:report,
  from} with {:collected, counts, errors, last} (last: the byte size and the
  referenced byte size of the last large payload).
  """
  def start_collector do
    pid = spawn(fn -> collect_loop(%{}, [], nil) end)
    Process.register(pid, :dist_collect)
    :ok
  end

  defp collect_loop(seen, errors, last) do
    receive do
      {:big, i, seq, atom, payload} ->
        ok = seq == Map.get(seen, i, 0) and payload == burst_payload(i, seq) and atom == burst_atom(i, seq)
        last = {byte_size(payload), :binary.referenced_byte_size(payload)}
        collect_loop(Map.put(seen, i, seq + 1), errs(ok, {:big, i, seq}, errors), last)

      {:small, i, seq, atom} ->
        ok = seq + 1 == Map.get(seen, i, 0) and atom == burst_atom(i, seq)
        collect_loop(seen, errs(ok, {:small, i, seq}, errors), last)

      {:report, from} ->
        send(from, {:collected, seen, Enum.reverse(errors), last})
        collect_loop(%{}, [], nil)
    end
  end

  defp errs(true, _, errors), do: errors
  defp errs(false, what, errors), do: [what | errors]

  @doc """
  `senders` processes at once each send `n` large messages to `node`'s
  :dist_collect (70 KB to 2 MiB, each with an atom made for it, which the
  first fragment's header carries as a new atom cache entry) and after each
  a small message with the same atom. `gap`: each sender waits for an
  answer from the collector's node after each message, so that messages
  come one at a time. Returns the collector's report.
  """
  def burst(node, senders, n, gap) do
    me = self()

    pids =
      for i <- 1..senders do
        spawn_link(fn ->
          for seq <- 0..(n - 1) do
            send({:dist_collect, node}, {:big, i, seq, burst_atom(i, seq), burst_payload(i, seq)})
            send({:dist_collect, node}, {:small, i, seq, burst_atom(i, seq)})
            if gap, do: :pong = :net_adm.ping(node)
          end

          send(me, {:sent, self()})
        end)
      end

    for p <- pids, do: receive(do: ({:sent, ^p} -> :ok))
    send({:dist_collect, node}, {:report, self()})

    receive do
      {:collected, seen, errors, last} -> {seen, errors, last}
    after
      3_600_000 -> :timeout
    end
  end

  defp burst_atom(i, seq), do: String.to_atom("dist_burst_#{i}_#{seq}")

  defp burst_payload(i, seq) do
    size = 70_000 + rem(i * 7919 + seq * 104_729, 2 <<< 20)
    :binary.copy(<<i, seq::32>>, div(size, 5))
  end

  @doc "Registers :dist_sink, which drops whatever it receives."
  def start_sink do
    pid = spawn(fn -> sink_loop() end)
    Process.register(pid, :dist_sink)
    :ok
  end

  defp sink_loop do
    receive do
      _ -> sink_loop()
    end
  end

  @doc "Starts a process that sends binaries of `size` bytes to `node`'s :dist_sink without end."
  def stream_to_sink(node, size) do
    bin = :binary.copy(:binary.copy(<<5>>, 4096), div(size, 4096))
    spawn(fn -> stream_loop({:dist_sink, node}, bin) end)
    :ok
  end

  defp stream_loop(dest, bin) do
    send(dest, bin)
    stream_loop(dest, bin)
  end

  @doc "Binary memory of this node in bytes, after a garbage collection of every process."
  def binary_memory do
    for p <- Process.list(), do: :erlang.garbage_collect(p)
    :erlang.memory(:binary)
  end

  @doc "Waits until this node's distribution tube to `node` has joined `n` messages; true if it did."
  def await_joined(node, n, tries \\ 600) do
    cond do
      frag_counts(node).frags_joined >= n -> true
      tries == 0 -> false
      true ->
        Process.sleep(10)
        await_joined(node, n, tries - 1)
    end
  end

  @doc "Waits (10 s at most) until this node has no tube left; the tubes left."
  def await_no_tubes(tries \\ 1000) do
    case {:tube.tubes(), tries} do
      {[], _} -> []
      {left, 0} -> left
      _ ->
        Process.sleep(10)
        await_no_tubes(tries - 1)
    end
  end

  @doc """
  Waits (10 s at most) until this node's binary memory, after a collection
  of every process, is under `limit` bytes; the last figure. A closed
  tube's row goes before its port has stopped and let go of what it held.
  """
  def await_binary_memory_below(limit, tries \\ 1000) do
    case binary_memory() do
      m when m < limit or tries == 0 -> m
      _ ->
        Process.sleep(10)
        await_binary_memory_below(limit, tries - 1)
    end
  end

  @doc "The fragment counters of this node's distribution tube to `node`."
  def frag_counts(node) do
    {:ok, ctrl} = Keyword.fetch(:erlang.system_info(:dist_ctrl), node)
    {:ok, info} = :tube.info(ctrl)
    Map.take(info, [:frags_joined, :frags_passed_on])
  end

  # ---- mnesia -----------------------------------------------------------------

  # mnesia is not a dependency of tube: named at run time, where the nodes
  # have it.
  defp mnesia, do: :mnesia

  @doc "Starts mnesia (schema in RAM) and joins the nodes in `others`."
  def mnesia_join(others) do
    :ok = mnesia().start()
    {:ok, _} = mnesia().change_config(:extra_db_nodes, others)
    :ok
  end

  @doc "Creates table :dist_kv with a RAM copy on each of `nodes`."
  def mnesia_create(nodes) do
    {:atomic, :ok} = mnesia().create_table(:dist_kv, ram_copies: nodes, attributes: [:k, :v])
    :ok
  end

  @doc "Waits for :dist_kv to be loaded here."
  def mnesia_wait, do: mnesia().wait_for_tables([:dist_kv], 120_000)

  @doc "Writes keys `range` (value: the writing node) in transactions."
  def mnesia_write(range) do
    for k <- range do
      {:atomic, :ok} = mnesia().transaction(fn -> mnesia().write({:dist_kv, k, node()}) end)
    end

    :ok
  end

  @doc "This node's own copy of :dist_kv, sorted."
  def mnesia_local_copy, do: :ets.tab2list(:dist_kv) |> Enum.sort()
end
