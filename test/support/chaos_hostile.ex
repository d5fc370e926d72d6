defmodule TubeTest.ChaosHostile do
  @moduledoc false
  # Drives native/tube_chaos's `tube-hostile` binary from tests: builds it
  # with cargo (same target dir as mix), runs it with the suite's Xenstore
  # socket, collects its output lines, and accepts its tubes on this node.

  @doc "Builds tube-hostile (release, like the rest of the native code) and returns its path."
  def build! do
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")

    {out, status} =
      System.cmd(cargo, ["build", "--release", "-p", "tube_chaos", "--bin", "tube-hostile"],
        stderr_to_stdout: true
      )

    if status != 0, do: raise("cargo build -p tube_chaos failed:\n" <> out)
    path = Path.join([System.get_env("CARGO_TARGET_DIR") || "target", "release", "tube-hostile"])
    true = File.exists?(path)
    Path.expand(path)
  end

  @doc "Starts the binary with `args`; returns a handle for await/2."
  def start(bin, args) do
    Port.open({:spawn_executable, bin}, [
      :binary,
      :exit_status,
      :stderr_to_stdout,
      {:line, 4096},
      args: Enum.map(args, &to_string/1)
    ])
  end

  @doc "Waits for the binary to exit: {exit_status, lines, result_map}."
  def await(port, timeout) do
    deadline = System.monotonic_time(:millisecond) + timeout
    collect(port, deadline, [])
  end

  @doc "Runs the binary to completion."
  def run(bin, args, timeout), do: await(start(bin, args), timeout)

  defp collect(port, deadline, lines) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {_, line}}} ->
        collect(port, deadline, [line | lines])

      {^port, {:exit_status, status}} ->
        lines = Enum.reverse(lines)
        {status, lines, result(lines)}
    after
      left ->
        {:os_pid, os_pid} = Port.info(port, :os_pid)
        System.cmd("kill", ["-9", Integer.to_string(os_pid)])
        raise "tube-hostile did not finish in time; output so far: #{inspect(Enum.reverse(lines))}"
    end
  end

  # The `RESULT k=v ...` line as a map of strings.
  defp result(lines) do
    case Enum.find(lines, &String.starts_with?(&1, "RESULT ")) do
      nil ->
        %{}

      "RESULT " <> rest ->
        for kv <- String.split(rest), [k, v] = String.split(kv, "=", parts: 2), into: %{}, do: {k, v}
    end
  end

  @doc """
  Accepts tubes on this node until told to stop, draining each (echoing
  every eighth packet) until it closes. Returns the acceptor's pid; stop/1
  returns %{reasons: [reason], packets: n}.
  """
  def start_acceptor do
    spawn_link(fn -> accept_loop(%{reasons: [], packets: 0}) end)
  end

  def stop_acceptor(pid, timeout \\ 10_000) do
    ref = make_ref()
    send(pid, {:stop, self(), ref})

    receive do
      {^ref, st} -> st
    after
      timeout -> raise "acceptor did not stop"
    end
  end

  defp accept_loop(st) do
    receive do
      {:stop, from, ref} -> send(from, {ref, %{st | reasons: Enum.reverse(st.reasons)}})
    after
      0 ->
        case :tube.accept(%{timeout: 500}) do
          {:ok, t} -> accept_loop(drain(t, st))
          {:error, :timeout} -> accept_loop(st)
          {:error, other} -> accept_loop(%{st | reasons: [{:accept_error, other} | st.reasons]})
        end
    end
  end

  defp drain(t, st) do
    receive do
      {^t, {:data, data}} ->
        if rem(st.packets, 8) == 0 do
          try do
            Port.command(t, data)
          rescue
            ArgumentError -> :closed
          end
        end

        drain(t, %{st | packets: st.packets + 1})

      {:tube_closed, ^t, reason} ->
        %{st | reasons: [reason | st.reasons]}
    after
      30_000 -> %{st | reasons: [:stuck | st.reasons]}
    end
  end
end
