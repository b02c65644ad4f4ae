<?php
/**
 * A throwaway MariaDB Galera cluster on this machine (one mariadbd per node, each with its own
 * directory, socket and free ports), started by a test class and gone when it is stopped or
 * the PHP process ends. Each mechanism a test needs, and how it works:
 *
 * - start(): every node's data directory is made by mariadb-install-db (run once, copied), so
 *   all start from the same files. Node 1 bootstraps the cluster (--wsrep-new-cluster); the
 *   test user is created on it before the others join, so they receive it with the data.
 *   Nodes 2..N join empty and get node 1's state by rsync SST (wsrep_sst_method=rsync). The
 *   SST script starts an rsync daemon, which, run as root, switches to user nobody and then
 *   cannot write a root-owned data directory: so every node runs as the Debian `mysql` user
 *   (`--user=mysql`), its directory owned by that user. mariabackup is not needed. A node
 *   killed with -9 rejoins the same way (IST or SST from a live node). Options per node:
 *   wsrep_provider=/usr/lib/galera/libgalera_smm.so, gcomm:// of every node's group port,
 *   binlog_format=ROW, innodb_autoinc_lock_mode=2, gmcast.listen_addr / ist.recv_addr /
 *   wsrep_sst_receive_address on free loopback ports, and repl.causal_read_timeout of 10 s
 *   (how long a read with wsrep_sync_wait waits for the node to catch up before it fails).
 * - A skewed clock: start(..., [3 => '+90s']) runs that node's mariadbd under
 *   libfaketime (LD_PRELOAD=libfaketimeMT.so.1, FAKETIME='+90s', as `faketime -f '+90s'` does), so NOW() and UTC_TIMESTAMP() there are
 *   90 s off while every other node's are right. FAKETIME_DONT_FAKE_MONOTONIC=1 keeps the
 *   monotonic clock true: Galera's own timeouts run on it.
 * - kill($n): SIGKILL to that node's mariadbd (a crash: no clean leave from the group; the
 *   others notice by their suspect timeout, a few seconds). restart($n) brings it back.
 * - isolate($n): SET GLOBAL wsrep_provider_options='gmcast.isolate=1' makes Galera 4 drop
 *   every group connection of that node and refuse new ones; within the suspect timeout
 *   (about 6 s, measured) the node is non-Primary and answers every query with 1047 "WSREP has
 *   not yet prepared node for application use", while the other two carry on as a cluster of
 *   two. rejoin($n) sets it back to 0; the node rejoins by IST. No firewall rules needed.
 * - holdApplier($n): on that node, one session runs SET GLOBAL wsrep_desync=ON (so flow
 *   control does not stop the rest of the cluster waiting for it) and then FLUSH TABLES WITH
 *   READ LOCK, held open: the node's applier cannot apply writes replicated from the others,
 *   while the node still answers reads (plain reads see the old state; a read with
 *   SET SESSION wsrep_sync_wait=1 waits for the node to catch up, up to
 *   repl.causal_read_timeout). A local write on it waits for the read lock. releaseApplier($n)
 *   unlocks and turns desync off. (Checked by hand: a write on node 1 stays invisible on
 *   node 2 until released; a sync_wait read on node 2 blocks meanwhile.)
 *
 * Node numbers start at 1. Needs root (to run mariadbd as `mysql`), galera-4, rsync and,
 * for a skewed node, faketime: unavailable() says which is missing, so a test can skip.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;

final class GaleraCluster
{
    public const PROVIDER = '/usr/lib/galera/libgalera_smm.so';
    /** libfaketime, thread-safe variant (mariadbd is multi-threaded). */
    public const FAKETIME_LIBRARY = '/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1';

    private string $dir;
    private string $password;
    /** @var array<int, array{sql:int, group:int, ist:int, sst:int}> */
    private array $ports = [];
    /** @var array<int, resource> running mariadbd processes by node */
    private array $procs = [];
    /** @var array<int, ?string> faketime offset per node */
    private array $faketime = [];
    /** @var array<int, PDO> sessions holding a node's applier */
    private array $held = [];
    private bool $stopped = false;

    /** Why a cluster cannot run here, or null if it can. */
    public static function unavailable(): ?string
    {
        if (!function_exists('posix_geteuid') || posix_geteuid() !== 0) {
            return 'needs root (each node runs as the mysql user)';
        }
        foreach ([self::PROVIDER => 'galera-4', '/usr/sbin/mariadbd' => 'mariadb-server',
            '/usr/bin/rsync' => 'rsync', '/usr/bin/wsrep_sst_rsync' => 'mariadb-server'] as $file => $package) {
            if (!is_file($file)) {
                return "$file is missing (apt-get install $package)";
            }
        }
        if (posix_getpwnam('mysql') === false) {
            return 'no mysql user (apt-get install mariadb-server)';
        }
        return null;
    }

    /**
     * Starts $nodes nodes and waits until every one is synced.
     *
     * @param array<int, string> $faketime node => libfaketime offset, e.g. [3 => '+90s']
     */
    public static function start(int $nodes = 3, array $faketime = []): self
    {
        if (($why = self::unavailable()) !== null) {
            throw new \RuntimeException("no Galera cluster: $why");
        }
        if ($faketime && !is_file(self::FAKETIME_LIBRARY)) {
            throw new \RuntimeException('faketime is missing (apt-get install faketime)');
        }
        $c = new self();
        $c->dir = rtrim((string) shell_exec('mktemp -d ' . escapeshellarg(sys_get_temp_dir() . '/mac-galera.XXXXXX')));
        chmod($c->dir, 0755); // the mysql user walks through it to its node's directory
        $c->password = 'test-' . bin2hex(random_bytes(6));
        register_shutdown_function([$c, 'stop']);
        try {
            $template = "{$c->dir}/template";
            $c->run(['mariadb-install-db', '--no-defaults', "--datadir=$template", '--user=mysql',
                '--auth-root-authentication-method=normal', '--skip-test-db', '--skip-name-resolve',
                '--innodb-log-file-size=16M'], "{$c->dir}/install.log");
            for ($n = 1; $n <= $nodes; $n++) {
                $c->ports[$n] = ['sql' => self::freePort(), 'group' => self::freePort(), 'ist' => self::freePort(), 'sst' => self::freePort()];
                $c->faketime[$n] = $faketime[$n] ?? null;
                mkdir($c->nodeDir($n));
                $c->freshData($n);
            }
            $c->launch(1, true);
            $c->waitReady([1], 60);
            // Before the others join: they receive this user with node 1's data.
            $root = $c->rootPdo(1);
            $root->exec("CREATE USER 'admin'@'%' IDENTIFIED BY '{$c->password}'");
            $root->exec("GRANT ALL PRIVILEGES ON *.* TO 'admin'@'%' WITH GRANT OPTION");
            // One joiner at a time, as Galera's own guides start a cluster: two nodes joining at
            // once share one donor, and a CI run once saw a joiner dropped from the component and
            // terminated mid-transfer that way.
            for ($n = 2; $n <= $nodes; $n++) {
                $c->join($n);
            }
            $c->waitClusterSize($nodes, 30);
        } catch (\Throwable $e) {
            $logs = $c->logTails();
            $c->stop();
            throw new \RuntimeException($e->getMessage() . "\n" . $logs, 0, $e);
        }
        return $c;
    }

    public function nodes(): array
    {
        return array_keys($this->ports);
    }

    public function port(int $n): int
    {
        return $this->ports[$n]['sql'];
    }

    /** Matomo's [database] settings for database $dbname through node $n. */
    public function config(int $n, string $dbname, string $prefix = 'matomo_'): array
    {
        return [
            'host' => '127.0.0.1', 'port' => (string) $this->port($n), 'username' => 'admin',
            'password' => $this->password, 'dbname' => $dbname, 'tables_prefix' => $prefix,
            'adapter' => 'PDO\\MYSQL', 'charset' => 'utf8mb4',
        ];
    }

    /** A connection to node $n as the test's admin user. */
    public function pdo(int $n, ?string $dbname = null): PDO
    {
        return new PDO("mysql:host=127.0.0.1;port={$this->port($n)};charset=utf8mb4" . ($dbname ? ";dbname=$dbname" : ''),
            'admin', $this->password, [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5]);
    }

    /**
     * A new database with Matomo's invalidations table, created through node $n (DDL replicates
     * to every node in total order); returns its name once every live node has it.
     */
    public function createDatabase(string $prefix = 'matomo_', int $n = 1): string
    {
        $dbname = 'mac_' . bin2hex(random_bytes(6));
        $pdo = $this->pdo($n);
        $pdo->exec("CREATE DATABASE `$dbname`");
        $pdo->exec("USE `$dbname`");
        $pdo->exec(sprintf(TestDatabase::INVALIDATIONS_DDL, $prefix));
        foreach ($this->nodes() as $m) {
            if ($this->isRunning($m)) {
                $this->syncedPdo($m)->query("SELECT 1 FROM `$dbname`.`{$prefix}archive_invalidations` LIMIT 1");
            }
        }
        return $dbname;
    }

    /** A connection to node $n whose reads wait until the node has applied every earlier commit. */
    public function syncedPdo(int $n, ?string $dbname = null): PDO
    {
        $pdo = $this->pdo($n, $dbname);
        $pdo->exec('SET SESSION wsrep_sync_wait = 1');
        return $pdo;
    }

    /** The libfaketime offset node $n runs with, or null for the true clock. */
    public function clock(int $n): ?string
    {
        return $this->faketime[$n] ?? null;
    }

    public function isRunning(int $n): bool
    {
        return isset($this->procs[$n]) && proc_get_status($this->procs[$n])['running'];
    }

    /** Crash: SIGKILL to node $n's mariadbd; returns once it is gone. */
    public function kill(int $n): void
    {
        if (!isset($this->procs[$n])) {
            return;
        }
        $pid = proc_get_status($this->procs[$n])['pid'];
        posix_kill($pid, SIGKILL);
        // Should something ever stand between us and mariadbd, its own pid file names it.
        $own = (int) @file_get_contents($this->nodeDir($n) . '/mysqld.pid');
        if ($own > 0 && $own !== $pid) {
            posix_kill($own, SIGKILL);
        }
        proc_close($this->procs[$n]);
        unset($this->procs[$n], $this->held[$n]);
    }

    /**
     * Node $n's first join. Joining is Galera's business, not what the tests are about, so a
     * joiner that dies while receiving its state gets one more try from a fresh data directory;
     * its log is kept in the artifacts folder and the retry is said on stderr.
     */
    private function join(int $n): void
    {
        for ($attempt = 1; ; $attempt++) {
            $this->launch($n, false);
            try {
                $this->waitReady([$n], 120);
                return;
            } catch (\RuntimeException $e) {
                if ($attempt >= 2 || $this->isRunning($n)) {
                    throw $e;
                }
            }
            $kept = self::keepLog($this->nodeDir($n) . '/error.log', "node$n-failed-join");
            fwrite(STDERR, "GaleraCluster: node $n exited while joining; trying once more from a fresh data directory (its log: $kept)\n");
            $this->kill($n);
            $this->freshData($n);
        }
    }

    /** Node $n's data directory as the template made it (a joiner receives the rest by SST). */
    private function freshData(int $n): void
    {
        $this->run(['rm', '-rf', $this->nodeDir($n) . '/data'], "{$this->dir}/install.log");
        $this->run(['cp', '-a', "{$this->dir}/template", $this->nodeDir($n) . '/data'], "{$this->dir}/install.log");
        $this->run(['chown', '-R', 'mysql:', $this->nodeDir($n)], "{$this->dir}/install.log");
    }

    /** Copies a log into tests/php/artifacts/GaleraCluster (the cluster's directory goes with stop()). */
    private static function keepLog(string $log, string $name): string
    {
        $dir = dirname(__DIR__) . '/php/artifacts/GaleraCluster';
        @mkdir($dir, 0777, true);
        $to = "$dir/$name-" . date('Ymd-His') . '.log';
        @copy($log, $to);
        return $to;
    }

    /** Starts a killed node again (optionally with another clock); returns once it is synced. */
    public function restart(int $n, ?string $faketime = null): void
    {
        $this->kill($n);
        $this->faketime[$n] = $faketime ?? $this->faketime[$n];
        $this->launch($n, false);
        $this->waitReady([$n], 120);
    }

    /** Restarts node $n with the clock offset $offset (null: the true clock) unless it has it. */
    public function setClock(int $n, ?string $offset): void
    {
        if ($this->clock($n) !== $offset || !$this->isRunning($n)) {
            $this->kill($n);
            $this->faketime[$n] = $offset;
            $this->launch($n, false);
            $this->waitReady([$n], 120);
        }
    }

    /** Cuts node $n off from the others; returns once it answers 1047 and they are one fewer. */
    public function isolate(int $n): void
    {
        $this->rootPdo($n)->exec("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'");
        $deadline = microtime(true) + 60;
        while (microtime(true) < $deadline) {
            if ($this->status($n, 'wsrep_ready') === 'OFF') {
                return;
            }
            usleep(200000);
        }
        throw new \RuntimeException("node $n still ready 60 s after gmcast.isolate=1");
    }

    /** Ends isolate(); returns once node $n is synced again. */
    public function rejoin(int $n): void
    {
        $this->rootPdo($n)->exec("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'");
        $this->waitReady([$n], 120);
    }

    /** Node $n stops applying what the others commit but still answers reads (see the header). */
    public function holdApplier(int $n): void
    {
        $pdo = $this->rootPdo($n);
        $pdo->exec('SET GLOBAL wsrep_desync = ON');
        $pdo->exec('FLUSH TABLES WITH READ LOCK');
        $this->held[$n] = $pdo;
    }

    public function releaseApplier(int $n): void
    {
        if (isset($this->held[$n])) {
            $this->held[$n]->exec('UNLOCK TABLES');
            $this->held[$n]->exec('SET GLOBAL wsrep_desync = OFF');
            unset($this->held[$n]);
        }
    }

    /** A status variable of node $n (read over its socket, which answers even when cut off). */
    public function status(int $n, string $name): ?string
    {
        // A node changing its membership (isolated, rejoining) may drop a session as it opens:
        // ask again on a new one.
        for ($attempt = 1; ; $attempt++) {
            try {
                $pdo = $this->rootPdo($n);
                $row = $pdo->query('SHOW GLOBAL STATUS LIKE ' . $pdo->quote($name))->fetch(PDO::FETCH_NUM);
                return $row === false ? null : (string) $row[1];
            } catch (\PDOException $e) {
                if ($attempt >= 5) {
                    throw $e;
                }
                usleep(200000);
            }
        }
    }

    /** Stops every node and removes every file. Safe to call twice. */
    public function stop(): void
    {
        if ($this->stopped) {
            return;
        }
        $this->stopped = true;
        $this->held = [];
        foreach (array_keys($this->procs) as $n) {
            $this->kill($n);
        }
        if (isset($this->dir) && str_starts_with($this->dir, sys_get_temp_dir() . '/mac-galera.')) {
            exec('rm -rf ' . escapeshellarg($this->dir));
        }
    }

    public function __destruct()
    {
        $this->stop();
    }

    /** The last lines of every node's error log, for a failure message. */
    public function logTails(int $lines = 15): string
    {
        $out = '';
        foreach ($this->nodes() as $n) {
            $log = $this->nodeDir($n) . '/error.log';
            $out .= "--- node $n ($log)\n" . (is_file($log) ? implode('', array_slice(file($log) ?: [], -$lines)) : "(none)\n");
        }
        return $out;
    }

    private function nodeDir(int $n): string
    {
        return "{$this->dir}/node$n";
    }

    private function rootPdo(int $n): PDO
    {
        // A node shutting down may take a session and never answer it; mysqlnd would wait a day
        // (its read timeout is taken when the connection opens).
        $before = ini_set('mysqlnd.net_read_timeout', '30');
        try {
            return new PDO('mysql:unix_socket=' . $this->nodeDir($n) . '/mysqld.sock', 'root', '',
                [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5]);
        } finally {
            if ($before !== false) {
                ini_set('mysqlnd.net_read_timeout', $before);
            }
        }
    }

    private function launch(int $n, bool $bootstrap): void
    {
        $d = $this->nodeDir($n);
        $group = implode(',', array_map(fn ($p) => "127.0.0.1:{$p['group']}", $this->ports));
        $p = $this->ports[$n];
        $cmd = ['/usr/sbin/mariadbd', '--no-defaults', "--datadir=$d/data", "--socket=$d/mysqld.sock",
            "--port={$p['sql']}", '--bind-address=127.0.0.1', '--user=mysql', '--skip-name-resolve',
            "--pid-file=$d/mysqld.pid", "--log-error=$d/error.log", '--max-connections=400',
            '--innodb-buffer-pool-size=64M', '--innodb-log-file-size=16M', '--innodb-flush-log-at-trx-commit=2',
            '--skip-log-bin', '--binlog-format=ROW', '--innodb-autoinc-lock-mode=2',
            '--wsrep-on=ON', '--wsrep-provider=' . self::PROVIDER, "--wsrep-cluster-address=gcomm://$group",
            "--wsrep-node-name=node$n", "--wsrep-node-address=127.0.0.1:{$p['group']}",
            "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{$p['group']};ist.recv_addr=127.0.0.1:{$p['ist']};gcache.size=32M;repl.causal_read_timeout=PT10S",
            "--wsrep-sst-receive-address=127.0.0.1:{$p['sst']}", '--wsrep-sst-method=rsync'];
        if ($bootstrap) {
            $cmd[] = '--wsrep-new-cluster';
        }
        $env = ['PATH' => '/usr/sbin:/usr/bin:/sbin:/bin'];
        if ($this->faketime[$n] !== null) {
            // The library itself rather than the faketime command, which forks: mariadbd stays
            // our child and kill() reaches it.
            $env['LD_PRELOAD'] = self::FAKETIME_LIBRARY;
            $env['FAKETIME'] = $this->faketime[$n];
            $env['FAKETIME_DONT_FAKE_MONOTONIC'] = '1';
        }
        $this->procs[$n] = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', "$d/stdout.log", 'a'],
            2 => ['file', "$d/stdout.log", 'a']], $pipes, null, $env);
    }

    /** @param int[] $nodes */
    private function waitReady(array $nodes, int $seconds): void
    {
        $deadline = microtime(true) + $seconds;
        foreach ($nodes as $n) {
            while (true) {
                if (!$this->isRunning($n)) {
                    throw new \RuntimeException("node $n exited while starting");
                }
                try {
                    if ($this->status($n, 'wsrep_ready') === 'ON' && $this->status($n, 'wsrep_local_state_comment') === 'Synced') {
                        break;
                    }
                } catch (\PDOException) {
                    // not listening yet
                }
                if (microtime(true) > $deadline) {
                    $state = [];
                    foreach (['wsrep_ready', 'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_cluster_size'] as $v) {
                        try {
                            $state[] = "$v=" . $this->status($n, $v);
                        } catch (\PDOException $e) {
                            $state[] = "$v: {$e->getMessage()}";
                        }
                    }
                    throw new \RuntimeException("node $n not synced within $seconds s (" . implode(', ', $state) . ")\n" . $this->logTails());
                }
                usleep(100000);
            }
        }
    }

    private function waitClusterSize(int $size, int $seconds): void
    {
        $deadline = microtime(true) + $seconds;
        while ((int) $this->status(1, 'wsrep_cluster_size') !== $size) {
            if (microtime(true) > $deadline) {
                throw new \RuntimeException("the cluster did not reach $size nodes within $seconds s");
            }
            usleep(100000);
        }
    }

    private function run(array $cmd, string $log): void
    {
        $proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['file', $log, 'a'], 2 => ['file', $log, 'a']], $pipes);
        if (proc_close($proc) !== 0) {
            throw new \RuntimeException(implode(' ', $cmd) . " failed; see $log: " . @file_get_contents($log));
        }
    }

    /** A loopback port nobody listens on right now (the kernel picks it). */
    public static function freePort(): int
    {
        $s = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) explode(':', (string) stream_socket_get_name($s, false))[1];
        fclose($s);
        return $port;
    }
}
