defmodule Tube.Bench.Endpoint do
  @moduledoc false
  # One end of a bench link, running on either node: the process that owns
  # the transport handle (tube port, socket) or, for Erlang distribution,
  # the process messages are sent to. It obeys commands from the bench
  # controller and runs the tight send, count and echo loops itself.
  #
  # Kinds and what arrives in the mailbox:
  #   :tube -> {Port, {:data, Bin}}       (port_command per packet)
  #   :tube_batch -> {Port, {:data_batch, [Bin]}}  (deliver: :batch; the
  #                   sender calls :tube.send_batch/2 with @batch packets)
  #   :dist -> Bin                        (Pid ! Bin)
  #   :unix -> {:tcp, Socket, Bin}        (gen_tcp, {:local, Path}, {packet, 2})
  #   :udp  -> {:udp, Socket, Ip, Port, Bin}  (gen_udp on 127.0.0.1)

  # Messages delivered per {active, N} re-arm, for the sockets and the tubes,
  # outside a count run.
  @active 500
  # A tube's credit in a count run is about this many bytes of packets (see
  # credit/2), within these bounds.
  @credit_bytes 256 * 1024
  @credit_range 32..500
  # Socket buffer sizes asked for (the kernel caps them at rmem/wmem_max).
  @sockbuf 4 * 1024 * 1024
  # Packets between two clock reads in the send and count loops.
  @check 32
  # Packets per :tube.send_batch/2 call of a :tube_batch sender: 256, or
  # fewer so that a call holds at most 64 KiB, half the peer's ring (what a
  # call brings beyond a full ring only drops, and costs a copy on the way).
  @batch 256
  @batch_bytes 64 * 1024
  # A batch tube's credit is about this many bytes of packets: a credit
  # counts packets, and a message holds up to 1024 of them.
  @batch_credit_bytes 1024 * 1024
  @batch_credit_range 64..16_384

  # ---- controller side ------------------------------------------------------

  @doc """
  Spawns an idle endpoint on `node`. With `off_heap` its message queue
  lives off the process heap (`message_queue_data: :off_heap`), which lets
  a sender enqueue without contending with the receiver for its lock.
  """
  def spawn_on(node, off_heap), do: Node.spawn(node, __MODULE__, :init, [off_heap])

  @doc "Runs `op` in endpoint `pid` and returns its result."
  def call(pid, op, timeout \\ 60_000) do
    ref = make_ref()
    send(pid, {:cmd, self(), ref, op})

    receive do
      {^ref, reply} -> reply
    after
      timeout -> exit({:endpoint_timeout, op_name(op)})
    end
  end

  @doc "Sends `op` without waiting; collect the reply with `await/2`."
  def cast(pid, op) do
    ref = make_ref()
    send(pid, {:cmd, self(), ref, op})
    ref
  end

  @doc "Waits for the reply of a `cast/2`."
  def await(ref, timeout \\ 60_000) do
    receive do
      {^ref, reply} -> reply
    after
      timeout -> exit(:endpoint_timeout)
    end
  end

  defp op_name(op) when is_tuple(op), do: elem(op, 0)
  defp op_name(op), do: op

  # ---- endpoint process -----------------------------------------------------

  @doc false
  def init(off_heap) do
    if off_heap, do: Process.flag(:message_queue_data, :off_heap)
    loop(%{kind: nil, handle: nil, peer: nil})
  end

  defp loop(st) do
    receive do
      {:cmd, from, ref, op} ->
        {reply, st} = handle(op, st)
        send(from, {ref, reply})
        if op == :stop, do: :ok, else: loop(st)
    end
  end

  defp handle({:tube_accept, timeout}, st), do: handle({:tube_accept, timeout, :tube}, st)

  defp handle({:tube_accept, timeout, kind}, st) do
    t0 = now()

    case guard(fn -> :tube.accept(Map.put(tube_opts(kind), :timeout, timeout)) end) do
      {:ok, port} -> {{:ok, now() - t0}, %{st | kind: kind, handle: port}}
      e -> {e, st}
    end
  end

  defp handle({:tube_open, domid, tid, timeout}, st), do: handle({:tube_open, domid, tid, timeout, :tube}, st)

  defp handle({:tube_open, domid, tid, timeout, kind}, st) do
    t0 = now()

    case guard(fn -> :tube.open(domid, tid, Map.put(tube_opts(kind), :timeout, timeout)) end) do
      {:ok, port} -> {{:ok, now() - t0}, %{st | kind: kind, handle: port}}
      e -> {e, st}
    end
  end

  defp handle({:dist, peer}, st), do: {:ok, %{st | kind: :dist, peer: peer}}

  defp handle({:unix_listen, path}, st) do
    opts = [:binary, {:ifaddr, {:local, path}}, {:packet, 2}, {:active, false} | sock_opts()]
    {:ok, l} = :gen_tcp.listen(0, opts)
    {:ok, %{st | handle: {:listen, l}}}
  end

  defp handle(:unix_accept, %{handle: {:listen, l}} = st) do
    {:ok, s} = :gen_tcp.accept(l, 10_000)
    :gen_tcp.close(l)
    :ok = :inet.setopts(s, active: @active)
    {:ok, %{st | kind: :unix, handle: s}}
  end

  defp handle({:unix_connect, path}, st) do
    opts = [:binary, {:packet, 2}, {:active, @active} | sock_opts()]
    {:ok, s} = :gen_tcp.connect({:local, path}, 0, opts, 10_000)
    {:ok, %{st | kind: :unix, handle: s}}
  end

  defp handle(:udp_open, st) do
    opts = [:binary, {:ip, {127, 0, 0, 1}}, {:active, @active}, {:read_packets, 256} | sock_opts()]
    {:ok, s} = :gen_udp.open(0, opts)
    {:ok, port} = :inet.port(s)
    {{:ok, port}, %{st | kind: :udp, handle: s}}
  end

  defp handle({:udp_peer, port}, st), do: {:ok, %{st | peer: {{127, 0, 0, 1}, port}}}

  defp handle({:send_for, size, ms}, st) do
    pkt = payload(size)
    deadline = now() + ms * 1_000_000
    t0 = now()
    n = send_loop(st.kind, st.handle, st.peer, pkt, deadline, 0)
    {%{attempted: n, ns: now() - t0}, st}
  end

  defp handle({:count, size, t0, t1, hard}, st), do: handle({:count, size, t0, t1, hard, :credit}, st)

  # `mode`: how the receiver takes packets. `:credit` (the transports
  # table): every receiver takes bounded credits, as the sockets do with
  # {active, N}: a tube then lets its ring drop what the receiver cannot
  # take instead of queueing it in the mailbox. For a tube alone (the
  # receive-mode table): `:default` (the tube's default delivery, no
  # re-arming), `{:active, true}` (every packet, no bound) or `{:active, n}`
  # (a fixed credit of n).
  defp handle({:count, size, t0, t1, hard, mode}, st) do
    arm_mode(st, mode, size)
    r = count_run(t0, t1, hard)
    # Back to the default delivery for what this endpoint does next (ping, echo).
    if st.kind in [:tube, :tube_batch], do: tube_default(st.handle)
    {r, st}
  end

  defp handle({:ping, size, n}, st) do
    pkt = payload(size)
    {ping_loop(st, pkt, n, []), st}
  end

  defp handle(:echo, st) do
    {echo_loop(st), st}
  end

  defp handle(:info, %{kind: kind, handle: port} = st) when kind in [:tube, :tube_batch], do: {:tube.info(port), st}
  defp handle(:info, st), do: {:none, st}

  defp handle(:stop, st) do
    case st do
      %{kind: kind, handle: p} when kind in [:tube, :tube_batch] -> :tube.close(p)
      %{kind: :unix, handle: s} -> :gen_tcp.close(s)
      %{kind: :udp, handle: s} -> :gen_udp.close(s)
      _ -> :ok
    end

    {:ok, st}
  end

  # The control plane may fail under load (a quota, a crash): an error to
  # report, not a reason for the endpoint to die.
  defp guard(fun) do
    fun.()
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  @doc """
  Packets per credit for a count run, each transport with the credit it
  does best with. A tube takes about 256 KiB of packets per credit (500 of
  64 bytes, 174 of 1500, 64 of 4096): a receiver that lets megabytes of
  binaries pile up between credits works on memory its cache no longer
  holds, and at 4096 bytes a tube receives 5-15% more with 64 packets per
  credit than with 500. The sockets keep 500 whatever the size: with such
  small credits UDP received about 8% less at 4096 bytes, and gen_tcp over a
  Unix socket fell as low as a third of its rate in full runs.
  """
  def credit(:tube, size), do: div(@credit_bytes, size) |> max(@credit_range.first) |> min(@credit_range.last)

  def credit(:tube_batch, size),
    do: div(@batch_credit_bytes, size) |> max(@batch_credit_range.first) |> min(@batch_credit_range.last)

  def credit(_kind, _size), do: @active

  defp arm_mode(st, :credit, size), do: arm_credit(st, credit(st.kind, size))
  defp arm_mode(%{kind: :tube, handle: p}, :default, _size), do: tube_default(p)
  defp arm_mode(%{kind: :tube, handle: p}, {:active, true}, _size), do: :ok = :tube.setopts(p, active: true)
  defp arm_mode(%{kind: :tube} = st, {:active, n}, _size) when is_integer(n), do: arm_credit(st, n)

  defp arm_credit(st, n) do
    Process.put(:credit, n)
    arm(st, n)
  end

  # The tube's default delivery.
  defp tube_default(p), do: :ok = :tube.setopts(p, active: :bounded)

  defp arm(%{kind: kind, handle: p}, n) when kind in [:tube, :tube_batch], do: :ok = :tube.setopts(p, active: n)
  defp arm(%{kind: :unix, handle: s}, n), do: :ok = :inet.setopts(s, active: n)
  defp arm(%{kind: :udp, handle: s}, n), do: :ok = :inet.setopts(s, active: n)
  defp arm(_st, _n), do: :ok

  # The credit of the count run under way (fixed for the run, and needed
  # once per credit, so the process dictionary holds it).
  defp credit, do: Process.get(:credit, @active)

  defp sock_opts, do: [{:sndbuf, @sockbuf}, {:recbuf, @sockbuf}, {:buffer, 65_536}]

  # Distinct contents per size; the same binary is sent each time.
  defp payload(size), do: :binary.copy(<<0x5A>>, size)

  defp now, do: :erlang.monotonic_time(:nanosecond)

  # ---- send loop --------------------------------------------------------------

  defp tube_opts(:tube), do: %{}
  defp tube_opts(:tube_batch), do: %{deliver: :batch}

  # A batch sender hands @batch packets to each call; the list is built once.
  defp send_loop(:tube_batch, port, _peer, pkt, deadline, n) do
    k = min(@batch, div(@batch_bytes, byte_size(pkt)))
    batch_loop(port, List.duplicate(pkt, k), k, deadline, n)
  end

  defp send_loop(kind, h, peer, pkt, deadline, n) do
    send_burst(kind, h, peer, pkt, @check)
    n = n + @check
    if now() < deadline, do: send_loop(kind, h, peer, pkt, deadline, n), else: n
  end

  defp batch_loop(port, pkts, k, deadline, n) do
    # {ok, Sent}: the rest of the call found the ring full, a drop.
    {:ok, _} = :tube.send_batch(port, pkts)
    n = n + k
    if now() < deadline, do: batch_loop(port, pkts, k, deadline, n), else: n
  end

  defp send_burst(_kind, _h, _peer, _pkt, 0), do: :ok

  defp send_burst(:tube, port, peer, pkt, k) do
    :erlang.port_command(port, pkt)
    send_burst(:tube, port, peer, pkt, k - 1)
  end

  defp send_burst(:dist, h, pid, pkt, k) do
    send(pid, pkt)
    send_burst(:dist, h, pid, pkt, k - 1)
  end

  defp send_burst(:unix, s, peer, pkt, k) do
    :ok = :gen_tcp.send(s, pkt)
    send_burst(:unix, s, peer, pkt, k - 1)
  end

  defp send_burst(:udp, s, {ip, port} = peer, pkt, k) do
    # A full socket buffer is a drop, exactly like a full ring.
    _ = :gen_udp.send(s, ip, port, pkt)
    send_burst(:udp, s, peer, pkt, k - 1)
  end

  defp send_one(%{kind: kind, handle: port}, pkt) when kind in [:tube, :tube_batch], do: :erlang.port_command(port, pkt)
  defp send_one(%{kind: :dist, peer: pid}, pkt), do: send(pid, pkt)
  defp send_one(%{kind: :unix, handle: s}, pkt), do: :gen_tcp.send(s, pkt)
  defp send_one(%{kind: :udp, handle: s, peer: {ip, port}}, pkt), do: :gen_udp.send(s, ip, port, pkt)

  # ---- count loop -------------------------------------------------------------
  #
  # Counts every packet that arrives. A timer message at t0 and at t1
  # (absolute monotonic ns of this node, rounded up to the timer's
  # milliseconds) snapshots the count when it is reached in the mailbox:
  # each mark counts exactly the packets queued before the timer fired, and
  # carries the time it was set for, so a receiver that gets to it late (a
  # thousand of them share two schedulers) still measures the same window.
  # After t1, drains until 300 ms pass without a packet or the hard deadline.

  defp count_run(t0, t1, hard) do
    for t <- [t0, t1] do
      ms = System.convert_time_unit(t, :nanosecond, :millisecond) + 1
      :erlang.start_timer(ms, self(), {:mark, ms * 1_000_000}, abs: true)
    end

    %{marks: [m0, m1], total: total, total_bytes: tb} = cloop(0, 0, @check, 2, [], hard)
    {n0, b0, ts0} = m0
    {n1, b1, ts1} = m1
    %{packets: n1 - n0, bytes: b1 - b0, ns: ts1 - ts0, total: total, total_bytes: tb}
  end

  # `left`: marks still to come. Once both are in, the clock is read every
  # @check packets (for the hard deadline), never per packet: that would
  # cost the receiver more than some transports spend on a packet.
  defp cloop(n, b, k, left, marks, hard) do
    receive do
      {_port, {:data, d}} -> bump(n + 1, b + byte_size(d), k, left, marks, hard)
      {_port, {:data_batch, l}} -> bump_batch(n, b, l, left, marks, hard)
      {:tcp, _, d} -> bump(n + 1, b + byte_size(d), k, left, marks, hard)
      {:udp, _, _, _, d} -> bump(n + 1, b + byte_size(d), k, left, marks, hard)
      d when is_binary(d) -> bump(n + 1, b + byte_size(d), k, left, marks, hard)
      {:timeout, _, {:mark, t}} -> cloop(n, b, k, left - 1, [{n, b, t} | marks], hard)
      {:tcp_passive, s} -> :inet.setopts(s, active: credit()) && cloop(n, b, k, left, marks, hard)
      {:udp_passive, s} -> :inet.setopts(s, active: credit()) && cloop(n, b, k, left, marks, hard)
      {:tube_passive, p} -> :tube.setopts(p, active: credit()) && cloop(n, b, k, left, marks, hard)
    after
      drain_ms(left) -> done(n, b, marks)
    end
  end

  defp bump(n, b, 0, left, marks, hard) do
    if left == 0 and now() > hard,
      do: done(n, b, marks),
      else: cloop(n, b, @check, left, marks, hard)
  end

  defp bump(n, b, k, left, marks, hard), do: cloop(n, b, k - 1, left, marks, hard)

  # A batch: every packet is counted (and its size read), then one clock read.
  defp bump_batch(n, b, [d | rest], left, marks, hard), do: bump_batch(n + 1, b + byte_size(d), rest, left, marks, hard)
  defp bump_batch(n, b, [], left, marks, hard), do: bump(n, b, 0, left, marks, hard)

  defp drain_ms(0), do: 300
  defp drain_ms(_left), do: :infinity

  defp done(n, b, marks), do: %{marks: Enum.reverse(marks), total: n, total_bytes: b}

  # ---- ping-pong ----------------------------------------------------------------

  defp ping_loop(_st, _pkt, 0, acc), do: acc

  defp ping_loop(st, pkt, n, acc) do
    t0 = now()
    send_one(st, pkt)

    receive do
      {_port, {:data, _}} -> :ok
      {_port, {:data_batch, _}} -> :ok
      {:tcp, _, _} -> :ok
      {:udp, _, _, _, _} -> :ok
      d when is_binary(d) -> :ok
      {:tcp_passive, s} -> :inet.setopts(s, active: @active) && wait_reply()
      {:udp_passive, s} -> :inet.setopts(s, active: @active) && wait_reply()
    after
      2_000 -> exit(:ping_lost)
    end

    ping_loop(st, pkt, n - 1, [now() - t0 | acc])
  end

  defp wait_reply do
    receive do
      {_port, {:data, _}} -> :ok
      {:tcp, _, _} -> :ok
      {:udp, _, _, _, _} -> :ok
      d when is_binary(d) -> :ok
    after
      2_000 -> exit(:ping_lost)
    end
  end

  # Echoes every packet until {:cmd, _, _, :stop_echo} (answered here).
  defp echo_loop(st) do
    receive do
      {_port, {:data, d}} -> send_one(st, d) && echo_loop(st)
      {_port, {:data_batch, l}} -> Enum.each(l, &send_one(st, &1)) && echo_loop(st)
      {:tcp, _, d} -> send_one(st, d) && echo_loop(st)
      {:udp, _, _, _, d} -> send_one(st, d) && echo_loop(st)
      d when is_binary(d) -> send_one(st, d) && echo_loop(st)
      {:tcp_passive, s} -> :inet.setopts(s, active: @active) && echo_loop(st)
      {:udp_passive, s} -> :inet.setopts(s, active: @active) && echo_loop(st)
      {:cmd, from, ref, :stop_echo} -> send(from, {ref, :ok}) && :stopped
    end
  end
end
