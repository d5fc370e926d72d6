# Each run of the suite gets its own Xenstore socket: the application
# starts an embedded tubestored there, and the suite stops it at the end.
run_dir = Path.join(System.tmp_dir!(), "tube-test-#{System.os_time(:millisecond)}")
File.mkdir_p!(run_dir)
File.chmod!(run_dir, 0o700)
socket = Path.join(run_dir, "xenstored.sock")
System.put_env("XENSTORED_PATH", socket)

{:ok, _} = Application.ensure_all_started(:tube)

# The daemon outlives nodes by design: stop it when the suite ends, and also
# when the VM exits without finishing the suite (a test file that does not
# compile, an interrupted run).
stop_daemon = fn ->
  TubeTest.Checks.signal_daemon(socket)
  File.rm_rf(run_dir)
end

System.at_exit(fn _ -> stop_daemon.() end)

ExUnit.after_suite(fn _ ->
  Application.stop(:tube)
  stop_daemon.()
end)

# A test tagged :known_failure shows a defect that is not fixed yet; run
# them with `mix test --only known_failure`.
ExUnit.start(timeout: 120_000, exclude: [:known_failure])
