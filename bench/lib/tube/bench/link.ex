defmodule Tube.Bench.Link do
  @moduledoc false
  # A link between the two nodes over one transport: endpoint `a` on this
  # node (the sender, and the pinger), endpoint `b` on the peer (the
  # receiver, and the echo).

  alias Tube.Bench.Endpoint, as: E

  defstruct [:kind, :a, :b]

  @transports [:tube, :tube_batch, :dist, :unix, :udp]

  @doc "The transports compared, in table order."
  def transports, do: @transports

  @doc """
  Sets up a link of `kind` to the peer node of `cluster`: `{link, open_ns}`,
  or for tubes `{:error, why}` when the handshake fails.
  """
  def open(kind, cluster, tid \\ 0)

  def open(:tube, c, tid), do: open_tube(c, tid, 20)

  # Both ends in batch mode ({deliver, batch}); the sender uses send_batch/2.
  def open(:tube_batch, c, tid), do: open_tube(c, tid, 20, :tube_batch)

  def open(:dist, c, _tid) do
    b = E.spawn_on(c.node, c.off_heap)
    a = E.spawn_on(node(), c.off_heap)
    :ok = E.call(a, {:dist, b})
    :ok = E.call(b, {:dist, a})
    {%__MODULE__{kind: :dist, a: a, b: b}, 0}
  end

  def open(:unix, c, _tid) do
    b = E.spawn_on(c.node, c.off_heap)
    a = E.spawn_on(node(), c.off_heap)
    path = Path.join(c.run_dir, "unix-#{System.unique_integer([:positive])}.sock")
    :ok = E.call(b, {:unix_listen, path})
    ref = E.cast(b, :unix_accept)
    :ok = E.call(a, {:unix_connect, path})
    :ok = E.await(ref)
    {%__MODULE__{kind: :unix, a: a, b: b}, 0}
  end

  def open(:udp, c, _tid) do
    b = E.spawn_on(c.node, c.off_heap)
    a = E.spawn_on(node(), c.off_heap)
    {:ok, pb} = E.call(b, :udp_open)
    {:ok, pa} = E.call(a, :udp_open)
    :ok = E.call(a, {:udp_peer, pb})
    :ok = E.call(b, {:udp_peer, pa})
    {%__MODULE__{kind: :udp, a: a, b: b}, 0}
  end

  # The Xenstore connection may be re-established under load
  # ({error, xenstore_down}): wait for it rather than fail the run.
  defp open_tube(c, tid, tries, kind \\ :tube) do
    b = E.spawn_on(c.node, c.off_heap)
    a = E.spawn_on(node(), c.off_heap)
    ref = E.cast(b, {:tube_accept, 10_000, kind})
    opened = E.call(a, {:tube_open, c.peer_domid, tid, 10_000, kind}, 20_000)
    accepted = E.await(ref, 20_000)

    case {opened, accepted} do
      {{:ok, open_ns}, {:ok, _}} ->
        {%__MODULE__{kind: kind, a: a, b: b}, open_ns}

      _ ->
        Process.exit(a, :kill)
        Process.exit(b, :kill)

        if opened == {:error, :xenstore_down} and tries > 0,
          do: Process.sleep(250) && open_tube(c, tid, tries - 1, kind),
          else: {:error, {opened, accepted}}
    end
  end

  @doc "Closes both ends and stops their processes."
  def close(%__MODULE__{a: a, b: b}) do
    E.call(a, :stop)
    E.call(b, :stop)
    :ok
  end
end
