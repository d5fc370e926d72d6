# What a test network costs: starts a net of N nodes (default 5) and stops
# it, R times (default 5) for each carrier (tube distribution, then TCP),
# and prints the seconds each took. Runs against its own tubestored,
# stopped at the end.
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

try do
  {:ok, _} = Application.ensure_all_started(:tube)

  for carrier <- [:tube, :tcp] do
    IO.puts("carrier=#{carrier} nodes=#{nodes} runs=#{runs}")

    times =
      for i <- 1..runs do
        t0 = System.monotonic_time(:microsecond)
        {:ok, net} = TubeNet.start(nodes: nodes, carrier: carrier)
        t1 = System.monotonic_time(:microsecond)
        :ok = TubeNet.stop(net)
        t2 = System.monotonic_time(:microsecond)
        {start, stop} = {(t1 - t0) / 1.0e6, (t2 - t1) / 1.0e6}

        IO.puts(
          "run #{i}: start #{Float.round(start, 3)} s, stop #{Float.round(stop, 3)} s, total #{Float.round(start + stop, 3)} s"
        )

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
