# What a test network costs: starts a net of N nodes (default 5) and stops
# it, R times (default 5) for each carrier (tube distribution, then TCP),
# and prints the seconds each took; in each run it also cuts the net in two
# ([n1] | the others), heals it, and kills one node, and prints how long
# after each fault the last of the events it causes was seen in the log
# (partition -> every nodedown across the cut; heal -> every nodeup; kill
# -> the others' nodedown), from the events' own timestamps. After each
# stop it checks that nothing is left behind: the nodes' OS processes, their
# names in epmd, their domains in Xenstore (released by the store when a
# node's connection closes: the script waits for it, bounded, and prints
# how long it took), and files in /dev/shm and in the working directory;
# it exits with status 1 if anything was left. Runs against its own tubestored, stopped at the end.
#
#   MIX_ENV=test mix run --no-start scripts/net-cost.exs [nodes] [runs]
{nodes, runs} =
  case System.argv() do
    [n, r] -> {String.to_integer(n), String.to_integer(r)}
    [n] -> {String.to_integer(n), 5}
    [] -> {5, 5}
  end

dir = Path.join(System.tmp_dir!(), "tube-net-cost-#{System.os_time(:millisecond)}")
File.mkdir_p!(dir)
File.chmod!(dir, 0o700)
socket = Path.join(dir, "xenstored.sock")
System.put_env("XENSTORED_PATH", socket)

defmodule NetCost do
  # Microseconds from the event matching `first` to the last event of
  # `rest` (all of which must come after it), among the entries after
  # sequence number `seq`, from the log's timestamps.
  def span(net, seq, first, rest) do
    :ok = TubeNet.expect(net, [first, {:unordered, rest}], 60_000, %{from: seq})
    events = for {s, t, e} <- TubeNet.events(net), s > seq, do: {t, e}
    {t0, _} = Enum.find(events, fn {_, e} -> :tube_net_log.matches(first, e) end)

    t1 =
      events
      |> Enum.filter(fn {_, e} -> Enum.any?(rest, &:tube_net_log.matches(&1, e)) end)
      |> Enum.map(&elem(&1, 0))
      |> Enum.max()

    t1 - t0
  end
end

defmodule NetLeftovers do
  # What a stopped network could leave behind, and how long the Xenstore
  # domains took to go (ms).
  # /dev/shm (rings are memfds, nothing should appear there) and the
  # working directory (crash dumps). Other programs on the machine may
  # write to /dev/shm meanwhile: an entry there is a lead, not a proof.
  def snapshot, do: %{shm: ls("/dev/shm"), cwd: ls(".")}

  def check(before, pids, names, domids) do
    alive = Enum.filter(pids, &alive?/1)
    {:ok, epmd} = epmd_names()
    in_epmd = for {n, _} <- epmd, List.to_string(n) in names, do: n
    t0 = System.monotonic_time(:millisecond)
    xs_left = wait_domains(domids, 1000)
    xs_ms = System.monotonic_time(:millisecond) - t0
    now = snapshot()
    files = for k <- [:shm, :cwd], (now[k] -- before[k]) != [], into: %{}, do: {k, now[k] -- before[k]}
    left = %{processes: alive, epmd: in_epmd, xenstore: xs_left, files: files}
    {left, xs_ms}
  end

  def nothing?(left), do: left == %{processes: [], epmd: [], xenstore: [], files: %{}}

  defp epmd_names do
    case :erl_epmd.names({127, 0, 0, 1}) do
      {:error, :address} -> {:ok, []}
      other -> other
    end
  end

  defp ls(dir), do: dir |> File.ls!() |> Enum.sort()

  defp alive?(pid) do
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} -> not (stat =~ ") Z ")
      _ -> false
    end
  end

  defp wait_domains(domids, tries) do
    left = Enum.filter(domids, &exists?/1)

    cond do
      left == [] -> []
      tries == 0 -> left
      true -> Process.sleep(10) && wait_domains(domids, tries - 1)
    end
  end

  defp exists?(domid) do
    {_, status} = System.cmd("xenstore-exists", ["/local/domain/#{domid}"], stderr_to_stdout: true)
    status == 0
  end
end

faults = fn net, nodes ->
  others = for i <- 2..nodes, do: :"n#{i}"
  across = for o <- others, e <- [{:nodedown, :n1, o}, {:nodedown, o, :n1}], do: e
  up = for o <- others, e <- [{:nodeup, :n1, o}, {:nodeup, o, :n1}], do: e
  seq = TubeNet.mark(net)
  :ok = TubeNet.partition(net, [[:n1], others])
  p = NetCost.span(net, seq, {:partition, :_}, across)
  seq = TubeNet.mark(net)
  :ok = TubeNet.heal(net)
  h = NetCost.span(net, seq, :heal, up)
  last = List.last(others)
  seen = for o <- [:n1 | others -- [last]], do: {:nodedown, o, last}
  seq = TubeNet.mark(net)
  :ok = TubeNet.kill(net, last)
  k = NetCost.span(net, seq, {:killed, last}, seen)

  IO.puts(
    "  partition -> last nodedown #{p / 1000} ms; heal -> last nodeup #{h / 1000} ms; " <>
      "kill -> last nodedown #{k / 1000} ms"
  )
end

try do
  {:ok, _} = Application.ensure_all_started(:tube)
  # The daemon's own files (socket, pidfile) are in `dir`, made before.
  before = NetLeftovers.snapshot()

  for carrier <- [:tube, :tcp] do
    IO.puts("carrier=#{carrier} nodes=#{nodes} runs=#{runs}")

    times =
      for i <- 1..runs do
        t0 = System.monotonic_time(:microsecond)
        {:ok, net} = TubeNet.start(nodes: nodes, carrier: carrier)
        t1 = System.monotonic_time(:microsecond)
        faults.(net, nodes)
        labels = TubeNet.labels(net)
        pids = for l <- labels, {:ok, p} <- [TubeNet.os_pid(net, l)], do: List.to_string(p)
        domids = for l <- labels, do: TubeNet.domid(net, l)
        names = for l <- labels, do: Atom.to_string(l)
        t1b = System.monotonic_time(:microsecond)
        :ok = TubeNet.stop(net)
        t2 = System.monotonic_time(:microsecond)
        {start, stop} = {(t1 - t0) / 1.0e6, (t2 - t1b) / 1.0e6}
        {left, xs_ms} = NetLeftovers.check(before, pids, names, domids)

        IO.puts(
          "run #{i}: start #{Float.round(start, 3)} s, stop #{Float.round(stop, 3)} s, total #{Float.round(start + stop, 3)} s; " <>
            if(NetLeftovers.nothing?(left),
              do: "nothing left behind (Xenstore domains gone #{xs_ms} ms after stop)",
              else: "LEFT BEHIND: #{inspect(left)}"
            )
        )

        if not NetLeftovers.nothing?(left), do: Process.put(:left_behind, true)

        {start, stop}
      end

    med = fn xs -> xs |> Enum.sort() |> Enum.at(div(length(xs), 2)) end

    IO.puts(
      "median: start #{Float.round(med.(Enum.map(times, &elem(&1, 0))), 3)} s, " <>
        "stop #{Float.round(med.(Enum.map(times, &elem(&1, 1))), 3)} s"
    )
  end
after
  Application.stop(:tube)

  case File.read(socket <> ".pid") do
    {:ok, pid} -> System.cmd("kill", ["-TERM", String.trim(pid)])
    _ -> :ok
  end

  File.rm_rf(dir)
end

if Process.get(:left_behind), do: System.halt(1)
