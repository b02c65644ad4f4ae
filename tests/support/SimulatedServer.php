<?php
/**
 * An archiving "server" on this machine: a server-agent.php process, by default inside its own
 * UTS and pid namespaces (own host name, own pids, pid 1 at its root), so killing its root
 * kills every process of that server at once, as a power loss would. Without root the agent
 * runs on this host in its own process group (same host name, shared pids).
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

final class SimulatedServer
{
    /** @var resource */
    private $proc;
    /** @var resource[] */
    private array $pipes = [];
    /** The agent's pid as seen from outside its namespace. */
    public int $outerPid;

    private function __construct(public string $name, public bool $isolated)
    {
    }

    public static function canIsolate(): bool
    {
        static $can = null;
        if ($can === null) {
            $can = function_exists('posix_geteuid') && posix_geteuid() === 0
                && is_executable('/usr/bin/unshare')
                && trim((string) shell_exec('unshare --uts --pid --fork --mount-proc sh -c "hostname probe-ns && hostname" 2>/dev/null')) === 'probe-ns';
        }
        return $can;
    }

    /**
     * @param array<string, string> $config Matomo [database] settings
     * @param array<string, string|int> $ini matomo_archive_claim.* settings for every process on it
     */
    public static function start(string $name, array $config, array $ini = [], ?bool $isolate = null): self
    {
        $server = new self($name, $isolate ?? self::canIsolate());
        $php = [PHP_BINARY, '-d', 'extension=' . TestDatabase::extensionPath()];
        foreach ($ini + ['heartbeat_interval' => 1, 'lease' => 3, 'auto_reap' => 0] as $k => $v) {
            $php[] = '-d';
            $php[] = "matomo_archive_claim.$k=$v";
        }
        $php[] = __DIR__ . '/server-agent.php';
        $php[] = json_encode($config);
        $cmd = $server->isolated
            ? array_merge(['unshare', '--uts', '--pid', '--fork', '--mount-proc', '--kill-child',
                'sh', '-c', 'hostname "$0" && exec "$@"', $name], $php)
            : array_merge(['setsid'], $php);
        $env = ['MATOMO_ARCHIVE_CLAIM_EXT' => TestDatabase::extensionPath(), 'PATH' => getenv('PATH')];
        $server->proc = proc_open($cmd, [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['file', '/dev/null', 'a']], $server->pipes, null, $env);
        $server->outerPid = $server->agentPid(proc_get_status($server->proc)['pid']);
        return $server;
    }

    /** unshare forks the namespace's pid 1: that child is the agent. */
    private function agentPid(int $launcher): int
    {
        if (!$this->isolated) {
            return $launcher;
        }
        for ($i = 0; $i < 200; $i++) {
            $children = trim((string) @file_get_contents("/proc/$launcher/task/$launcher/children"));
            if ($children !== '') {
                return (int) explode(' ', $children)[0];
            }
            usleep(10000);
        }
        throw new \RuntimeException("server {$this->name} did not start");
    }

    /** Sends one command; returns the agent's answer. */
    public function send(array $command): array
    {
        fwrite($this->pipes[0], json_encode($command) . "\n");
        $line = fgets($this->pipes[1]);
        if ($line === false) {
            throw new \RuntimeException("server {$this->name} is gone");
        }
        $answer = json_decode($line, true);
        if (isset($answer['error'])) {
            throw new \RuntimeException("server {$this->name}: {$answer['error']}");
        }
        return $answer;
    }

    /**
     * Sends one command without waiting for its answer (which answer() reads), so a test can
     * drive several servers at once, or go on while a server's call is blocked.
     */
    public function request(array $command): void
    {
        fwrite($this->pipes[0], json_encode($command) . "\n");
    }

    /**
     * The answer to the oldest request() not yet answered, or null if none came within
     * $seconds (the request stays pending: call again to keep waiting). An error answer is
     * returned as it is (['error' => ...]), not thrown.
     */
    public function answer(float $seconds): ?array
    {
        $read = [$this->pipes[1]];
        $write = $except = null;
        $sec = (int) $seconds;
        if (@stream_select($read, $write, $except, $sec, (int) (($seconds - $sec) * 1e6)) < 1) {
            return null;
        }
        $line = fgets($this->pipes[1]);
        if ($line === false) {
            throw new \RuntimeException("server {$this->name} is gone");
        }
        return json_decode($line, true);
    }

    /**
     * A pid (as this server sees it) of one of its live processes other than the agent: the
     * agent's children, which include climulti:request children whose archiver was killed
     * (adopted by pid 1). Not a zombie: the agent never collects adopted children, and
     * "killing" one again later would be no death at all. Null if there is none.
     */
    public function randomLiveChild(): ?int
    {
        $outer = $this->outerPid;
        $children = array_values(array_filter(
            explode(' ', trim((string) @file_get_contents("/proc/$outer/task/$outer/children"))),
            fn ($pid) => $pid !== '' && preg_match('/\) [RSD] /', (string) @file_get_contents("/proc/$pid/stat")) === 1,
        ));
        if (!$children) {
            return null;
        }
        $child = (int) $children[array_rand($children)];
        // Its pid as the server sees it: the last field of NSpid.
        foreach (file("/proc/$child/status") ?: [] as $line) {
            if (str_starts_with($line, 'NSpid:')) {
                $pids = preg_split('/\s+/', trim(substr($line, 6)));
                return (int) end($pids);
            }
        }
        return null;
    }

    /** The host name its processes see. */
    public function host(): string
    {
        return $this->isolated ? $this->name : (string) gethostname();
    }

    /** Power loss: every process of the server dies at once, nothing shuts down cleanly. */
    public function killWhole(): void
    {
        posix_kill($this->isolated ? $this->outerPid : -$this->outerPid, SIGKILL);
        $this->close();
    }

    public function stop(): void
    {
        if (is_resource($this->proc)) {
            @fwrite($this->pipes[0], json_encode(['cmd' => 'exit']) . "\n");
            $this->close();
        }
    }

    private function close(): void
    {
        foreach ($this->pipes as $p) {
            if (is_resource($p)) {
                fclose($p);
            }
        }
        if (is_resource($this->proc)) {
            proc_close($this->proc);
        }
    }

    public function __destruct()
    {
        if (is_resource($this->proc)) {
            posix_kill($this->isolated ? $this->outerPid : -$this->outerPid, SIGKILL);
            $this->close();
        }
    }
}
