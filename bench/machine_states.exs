# One pair of nodes and one tube, its 64-byte throughput measured again and
# again, each window with the machine's references (Tube.Bench.Machine)
# taken just before it: shows whether a change in the tube's rate follows a
# change of the host, within one pair of nodes.
#
#   cd bench && MIX_ENV=prod mix run --no-start machine_states.exs [WINDOWS]
#
# Prints one line per 2 s window: Mpps received and offered, drops, both
# nodes' CPU ns per packet, and the references.
alias Tube.Bench.{Cluster, Link, Machine, Suite}

windows = case System.argv() do
  [n] -> String.to_integer(n)
  _ -> 16
end

Mix.Task.run("app.config")
c = Cluster.start(true)
{link, _} = Link.open(:tube, c, 1_000_000)

try do
  for i <- 1..windows do
    ref = Machine.reference()
    r = Suite.costed_run(link, c, 64, %{warmup_ms: 300, window_ms: 2000})

    IO.puts("#{Time.truncate(Time.utc_now(), :second)} #{i}: #{Suite.fmt(r.rx_pps / 1.0e6)} Mpps rx, " <>
              "#{Suite.fmt(r.tx_pps / 1.0e6)} offered, drops #{Suite.fmt(r.drop_pct)}%, CPU ns/packet " <>
              "receiver #{Suite.fmt(r.rx_cpu_ns_per_pkt)} sender #{Suite.fmt(r.tx_cpu_ns_per_pkt)} | machine #{Suite.machine_line(ref)}")
  end
after
  Link.close(link)
  Cluster.stop(c)
end
