defmodule Tube do
  @moduledoc """
  Tubes: shared-memory packet links between Erlang nodes on one machine,
  found through Xenstore. This module mirrors the Erlang module `:tube`.

  A tube is a port. Send with `send/2` (`{:error, :emsgsize}` for an
  empty or oversize packet), `Port.command(tube, data)` or
  `Kernel.send(tube, {self(), {:command, data}})`; the owner receives each packet
  as `{tube, {:data, binary}}`. Packets are 1..4096 bytes; delivery is
  lossy (a full ring drops and counts, the sender never blocks).

  Before a tube closes by itself its owner receives
  `{:tube_closed, tube, reason}` with `reason` one of `:peer_closed`,
  `:peer_down`, `:corrupt`, `:io_error`, `:internal_error`.

      {:ok, t} = Tube.open(peer_domid)
      :ok = Tube.send(t, "ping")
      receive do
        {^t, {:data, reply}} -> reply
      end
  """

  import Kernel, except: [send: 2]

  @typedoc "An open tube: a port."
  @type t :: port()
  @typedoc "A domain id."
  @type domid :: 0..32751
  @typedoc "A tube id, telling apart tubes between the same two domains."
  @type tid :: 0..4_294_967_295

  @doc "Opens tube 0 to domain `domid`. See `open/3`."
  @spec open(domid()) :: {:ok, t()} | {:error, term()}
  def open(domid), do: :tube.open(domid)

  @doc "Opens tube `tid` to domain `domid`. See `open/3`."
  @spec open(domid(), tid()) :: {:ok, t()} | {:error, term()}
  def open(domid, tid), do: :tube.open(domid, tid)

  @doc """
  Opens tube `tid` to domain `domid`; the peer calls `accept/0,1`, in
  either order. Options: `:timeout` in milliseconds or `:infinity`
  (default: the `:open_timeout` application env, 5000), `:active` (the
  first delivery mode), `:busy_poll` (the polling window in
  microseconds, default the `:busy_poll` application env, 50), see
  `setopts/2`, `:delivery` (`:lossy`, the default, or `:reliable`) and
  `:deliver` (`:packet`, the default, or `:batch`; see `setopts/2`).
  Options may be a map or a keyword list; an unknown key raises
  `ArgumentError` naming it. Domain 0 (Xen's control domain) is never a
  node: `ArgumentError`.

  Errors: `:timeout`, `:no_domain`, `:self`, `:tid_in_use`,
  `:xenstore_down`, or a ring set-up error. Arguments out of range raise
  `ArgumentError`.
  """
  @spec open(domid(), tid(), map() | keyword()) ::
          {:ok, t()} | {:error, term()}
  def open(domid, tid, opts), do: :tube.open(domid, tid, opts)

  @doc "Waits for a tube from any domain."
  @spec accept() :: {:ok, t()} | {:error, term()}
  def accept, do: :tube.accept()

  @doc """
  Waits for a tube from any domain; options (a map or a keyword list)
  `:timeout` (default `:infinity`), `:active`, `:busy_poll`, `:delivery`
  and `:deliver` (as in `open/3`), and `:tids`, the inclusive range
  `{min, max}` of Tids accepted.
  """
  @spec accept(map() | keyword()) :: {:ok, t()} | {:error, term()}
  def accept(opts), do: :tube.accept(opts)

  @doc "Closes both ends of the tube; `{:error, :closed}` if already closed."
  @spec close(t()) :: :ok | {:error, :closed}
  def close(tube), do: :tube.close(tube)

  @doc "This node's domain id."
  @spec domid() :: domid()
  def domid, do: :tube.domid()

  @doc """
  Role (`:nock` opened, `:tip` accepted), peer, tid, state and ring
  counters (`:sent`, `:received`, `:dropped`, `:rejected`, bytes, wakeups),
  the `:busy_poll` window and whether the tube is `:polling` now.
  """
  @spec info(t()) :: {:ok, map()} | {:error, :closed}
  def info(tube), do: :tube.info(tube)

  @doc """
  Sets how packets are delivered, as `{:active, _}` does for sockets:
  `:bounded` (the default of a lossy tube) every packet while the owner
  keeps up, held in the ring (the excess dropping there, counted) while
  its mailbox is far behind; `true` (the default of a reliable tube) every
  packet with no bound, `false` none, `:once` one, `n` adds n.
  When the allowed packets are delivered the owner gets
  `{:tube_passive, tube}`; meanwhile packets wait in the ring and, once it
  is full, the peer's sends drop (counted on its side) instead of filling
  the owner's mailbox.

  `{:busy_poll, us}` (0..100000, default 50): after a send, a tube whose
  peer has been answering polls its ring for up to `us` microseconds, so a
  reply reaches the owner in microseconds instead of through an fd wake-up
  and a sleeping scheduler. A window without a packet ends polling until
  packets arrive again; one-way streams and idle tubes never poll. 0 turns
  it off.

  `{:deliver, :batch}` (lossy tubes only) delivers many packets per
  message, `{tube, {:data_batch, [packet]}}`, in the order they were sent,
  each packet a binary of its own; `{:deliver, :packet}` (the default) goes
  back to one `{tube, {:data, packet}}` per packet, with nothing lost or
  reordered at the switch. Credits (`{:active, n}`) count packets in both.
  """
  @spec setopts(t(), keyword() | map()) ::
          :ok | {:error, :closed}
  def setopts(tube, opts), do: :tube.setopts(tube, opts)

  @doc """
  Sends one packet (any iodata), as `:gen_udp.send/2` does: `:ok` once
  the tube has it, `{:error, :emsgsize}` for an empty packet or one over
  4096 bytes (nothing is sent), `{:error, :closed}` on a closed tube.
  Delivery is lossy: `:ok` does not mean the peer's ring had room.
  `Port.command/2` answers `true` for every packet instead, and counts an
  empty or oversize one as `:rejected` in `info/1`.
  """
  @spec send(t(), iodata()) :: :ok | {:error, :emsgsize | :closed}
  def send(tube, packet), do: :tube.send(tube, packet)

  @doc """
  Sends many packets in one call, in order, each element one packet (iodata
  of 1..4096 bytes): `{:ok, sent}` says the first `sent` went into the
  peer's ring; the ring was full for the next one, which and all after it
  were dropped and counted (`:dropped` in `info/1`). `{:error, :closed}` on
  a closed tube. A bad packet raises `ArgumentError` naming its position,
  and nothing is sent. A list of binaries is the cheapest form: it reaches
  the driver in one `:erlang.port_call/3`, with no framing built in Elixir;
  other iodata is framed first. See `:tube.send_batch/2`.
  """
  @spec send_batch(t(), [iodata()]) :: {:ok, non_neg_integer()} | {:error, :closed}
  def send_batch(tube, packets), do: :tube.send_batch(tube, packets)

  @doc """
  Makes `pid` the owner of `tube`, as `:gen_tcp.controlling_process/2`
  does: the packets (and `:tube_passive`, `:tube_closed` messages) already
  in the caller's mailbox go to `pid` first, in order, then what the tube
  delivers next. Only the owner may call it: `{:error, :not_owner}`
  otherwise, `{:error, :closed}` on a closed tube.
  """
  @spec controlling_process(t(), pid()) :: :ok | {:error, :not_owner | :closed}
  def controlling_process(tube, pid), do: :tube.controlling_process(tube, pid)

  @doc "All tubes of this node with their states."
  @spec tubes() :: [map()]
  def tubes, do: :tube.tubes()
end
