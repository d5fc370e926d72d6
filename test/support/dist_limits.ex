defmodule DistTest.Limits do
  @moduledoc false
  # Helpers for the distribution tests at the file-descriptor limit. The
  # nodes are BEAM OS processes started with `-proto_dist inet_tcp tube`
  # (OTP's :peer over standard I/O, so that the test node, which stays
  # undistributed, keeps hold of a node that has no descriptor left), bound
  # to a private Xenstore daemon (TubeTest.CtrlWorld); a node may run under
  # `ulimit -n`, which only makes its descriptors few enough to take them
  # all cheaply. The functions below the start/stop helpers run inside the
  # nodes, through `call/4`.

  # ---- on the test node -------------------------------------------------------

  @doc """
  Starts a node named after `role` on world `w`'s daemon. Options: `cookie`
  (an atom, required), `args` (more emulator arguments, strings),
  `ulimit_n` (run under `ulimit -n`, TubeTest.CtrlWorld.with_ulimit_n/2).
  The node starts the tube application and runs its distribution over
  tubes. Returns %{peer, node, os_pid, domid}.
  """
  def start(w, role, opts) do
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    cookie = Keyword.fetch!(opts, :cookie)

    args =
      paths ++
        [~c"-proto_dist", ~c"inet_tcp", ~c"tube", ~c"-setcookie", Atom.to_charlist(cookie)] ++
        Enum.map(Keyword.get(opts, :args, []), &to_charlist/1)

    name = :"dl_#{role}_#{System.pid()}x#{System.unique_integer([:positive])}"

    base = %{
      name: name,
      connection: :standard_io,
      args: args,
      env: [{~c"XENSTORED_PATH", String.to_charlist(w.socket)}],
      wait_boot: 60_000
    }

    {:ok, peer, node} = :peer.start(TubeTest.CtrlWorld.with_ulimit_n(base, opts[:ulimit_n]))
    {:ok, _} = :peer.call(peer, :application, :ensure_all_started, [:tube], 30_000)
    os_pid = :peer.call(peer, :os, :getpid, []) |> List.to_integer()
    domid = :peer.call(peer, :tube, :domid, [])
    %{peer: peer, node: node, os_pid: os_pid, domid: domid}
  end

  @doc "Runs m:f(a) in the node."
  def call(%{peer: peer}, m, f, a, timeout \\ 120_000), do: :peer.call(peer, m, f, a, timeout)

  @doc """
  Stops the node (if it still runs) and waits until its OS process is gone
  (kill -9 after 10 s), so that the daemon it used may go next.
  """
  def stop(%{peer: peer, os_pid: os_pid}) do
    try do
      :peer.stop(peer)
    catch
      _, _ -> :ok
    end

    await_gone(Integer.to_string(os_pid), 1000)
  end

  defp await_gone(os_pid, 0) do
    System.cmd("kill", ["-KILL", os_pid], stderr_to_stdout: true)
    :ok
  end

  defp await_gone(os_pid, tries) do
    if alive?(os_pid) do
      Process.sleep(10)
      await_gone(os_pid, tries - 1)
    else
      :ok
    end
  end

  @doc "Whether the node's OS process runs (is not gone or a zombie)."
  def os_alive?(%{os_pid: os_pid}), do: alive?(Integer.to_string(os_pid))

  defp alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> not (stat =~ ~r/\) Z /)
      _ -> false
    end
  end

  @doc """
  The domids that domain `d` has tube entries for in world `w`'s Xenstore:
  peers of the tubes it opened (`data/nock/<peer>`) and of those opened to
  it (`data/tip/<peer>`).
  """
  def xs_peers(w, d) do
    for dir <- ["nock", "tip"],
        p <- TubeTest.CtrlWorld.children(w, "/local/domain/#{d}/data/#{dir}"),
        uniq: true,
        do: String.to_integer(p)
  end

  @doc """
  Waits (30 s at most) until domain `d` has tube entries in Xenstore for no
  other domids than `peers`; the others then (empty if it got there).
  """
  def await_xs_peers(w, d, peers, tries \\ 300) do
    extra = xs_peers(w, d) -- peers

    cond do
      extra == [] -> []
      tries == 0 -> extra
      true -> Process.sleep(100) && await_xs_peers(w, d, peers, tries - 1)
    end
  end

  # ---- inside the nodes -----------------------------------------------------------

  @doc """
  Loads every module of the applications this node runs (the test's
  helpers are tube's in the test build) and of Elixir, which the helpers
  call. A release loads them all at boot; this node runs interactively,
  where a module first called while it has no descriptor left could not be
  read from its file, and the node would fail for that instead of for what
  the test looks at.
  """
  def preload do
    _ = :application.load(:elixir)
    apps = for {app, _, _} <- :application.loaded_applications(), do: app

    mods =
      Enum.flat_map(apps, fn app ->
        case :application.get_key(app, :modules) do
          {:ok, ms} -> ms
          :undefined -> []
        end
      end)

    for m <- mods, do: {:module, ^m} = :code.ensure_loaded(m)
    :ok
  end

  @doc """
  Takes every file descriptor this node can still get: a process
  (registered as :dist_limits_hog) opens /dev/null until the system says
  `emfile`, and holds the files until release_one/0 or release/0. Returns
  {:ok, files opened} once the node is out of descriptors.
  """
  def exhaust do
    :ok = preload()
    parent = self()

    pid =
      spawn(fn ->
        true = :erlang.register(:dist_limits_hog, self())
        files = open_until_emfile([])
        send(parent, {:exhausted, self(), length(files)})
        hold(files)
      end)

    receive do
      {:exhausted, ^pid, n} -> {:ok, n}
    after
      60_000 -> :timeout
    end
  end

  defp open_until_emfile(files) do
    case :file.open(~c"/dev/null", [:read, :raw]) do
      {:ok, f} -> open_until_emfile([f | files])
      {:error, :emfile} -> files
    end
  end

  defp hold(files) do
    receive do
      {:release_one, from} ->
        [f | rest] = files
        :ok = :file.close(f)
        send(from, {:held, length(rest)})
        hold(rest)

      {:release, from} ->
        for f <- files, do: :ok = :file.close(f)
        send(from, {:released, length(files)})
    end
  end

  @doc "Whether this node can open a file now: true, or the error."
  def can_open? do
    case :file.open(~c"/dev/null", [:read, :raw]) do
      {:ok, f} -> :file.close(f) == :ok
      {:error, reason} -> reason
    end
  end

  @doc "Closes one of the files exhaust/0 opened; how many it still holds."
  def release_one do
    send(:dist_limits_hog, {:release_one, self()})

    receive do
      {:held, n} -> n
    after
      60_000 -> :timeout
    end
  end

  @doc "Closes the files exhaust/0 opened; how many."
  def release do
    send(:dist_limits_hog, {:release, self()})

    receive do
      {:released, n} -> n
    after
      60_000 -> :timeout
    end
  end

  @doc """
  This node's open file descriptors, as {fd, what it is} sorted by fd
  (the listing's own descriptor left out).
  """
  def fds do
    {:ok, names} = :file.list_dir(~c"/proc/self/fd")

    Enum.sort(
      for n <- names,
          {:ok, what} <- [:file.read_link_all(~c"/proc/self/fd/" ++ n)],
          do: {List.to_integer(n), List.to_string(what)}
    )
  end

  @doc """
  Waits (30 s at most) until this node holds `count` descriptors or fewer;
  the descriptors it holds then (empty if it got there).
  """
  def await_fd_count(count, tries \\ 3000) do
    now = fds()

    cond do
      length(now) <= count -> []
      tries == 0 -> now
      true -> Process.sleep(10) && await_fd_count(count, tries - 1)
    end
  end

  @doc """
  Waits (30 s at most) until this node has a tube with domain `domid` in
  state `state` (as :tube.tubes/0 shows it); true if it saw one.
  """
  def await_tube_in(domid, state, tries \\ 3000) do
    cond do
      Enum.any?(:tube.tubes(), &(&1.peer == domid and &1.state == state)) -> true
      tries == 0 -> false
      true -> Process.sleep(10) && await_tube_in(domid, state, tries - 1)
    end
  end

  @doc """
  Starts a process (registered as :dist_limits_pinger) that pings `node`
  again and again until stop_pinging/0.
  """
  def start_pinging(node) do
    pid = spawn(fn -> ping_loop(node, []) end)
    true = :erlang.register(:dist_limits_pinger, pid)
    :ok
  end

  defp ping_loop(node, results) do
    receive do
      {:stop, from} -> send(from, {:pings, :lists.reverse(results)})
    after
      0 -> ping_loop(node, [:net_adm.ping(node) | results])
    end
  end

  @doc "Stops the process of start_pinging/1 once its ping under way is answered; the answers, in order."
  def stop_pinging do
    send(:dist_limits_pinger, {:stop, self()})

    receive do
      {:pings, results} -> results
    after
      120_000 -> :timeout
    end
  end

  @doc "A binary of `size` bytes sent to `node` and back: whether it came back equal."
  def round_trip(node, size) do
    bin = :rand.bytes(size)
    :erpc.call(node, :erlang, :binary_part, [bin, 0, size], 60_000) == bin
  end
end
