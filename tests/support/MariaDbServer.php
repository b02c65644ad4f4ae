<?php
/**
 * A throwaway standalone mariadbd (own directory, socket and free port, binary log on, a
 * server id of its own), for failover tests: a primary and a replica that follows it by
 * MariaDB replication, promoted when the primary dies. Stopped, and its files removed, by
 * stop() or when the PHP process ends. Needs root (the server runs as root, as in
 * with-mariadb.sh).
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;

final class MariaDbServer
{
    private string $dir;
    private int $port;
    /** @var resource */
    private $proc;
    private bool $stopped = false;

    /** The test user: the same name and password on every server, as a failover needs. */
    public function __construct(private int $serverId, private string $password)
    {
    }

    public static function start(int $serverId, string $password): self
    {
        $s = new self($serverId, $password);
        $s->dir = rtrim((string) shell_exec('mktemp -d ' . escapeshellarg(sys_get_temp_dir() . '/mac-mariadb.XXXXXX')));
        register_shutdown_function([$s, 'stop']);
        $s->port = GaleraCluster::freePort();
        $log = "{$s->dir}/install.log";
        $proc = proc_open(['mariadb-install-db', '--no-defaults', "--datadir={$s->dir}/data", '--user=root',
            '--auth-root-authentication-method=normal', '--skip-test-db', '--skip-name-resolve', '--innodb-log-file-size=16M'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $log, 'a'], 2 => ['file', $log, 'a']], $pipes);
        if (proc_close($proc) !== 0) {
            throw new \RuntimeException('mariadb-install-db failed: ' . file_get_contents($log));
        }
        $s->proc = proc_open(['/usr/sbin/mariadbd', '--no-defaults', "--datadir={$s->dir}/data", "--socket={$s->dir}/mysqld.sock",
            "--port={$s->port}", '--bind-address=127.0.0.1', '--user=root', '--skip-name-resolve',
            "--log-error={$s->dir}/error.log", "--pid-file={$s->dir}/mysqld.pid", '--max-connections=200',
            '--innodb-buffer-pool-size=64M', '--innodb-log-file-size=16M', '--innodb-flush-log-at-trx-commit=2',
            "--server-id=$serverId", "--log-bin={$s->dir}/binlog", '--binlog-format=ROW', '--log-slave-updates'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'a'], 2 => ['file', '/dev/null', 'a']], $pipes);
        $deadline = microtime(true) + 60;
        while (true) {
            try {
                $s->root()->query('SELECT 1');
                break;
            } catch (\PDOException $e) {
                if (microtime(true) > $deadline || !proc_get_status($s->proc)['running']) {
                    throw new \RuntimeException("mariadbd did not start: {$e->getMessage()}\n" . @file_get_contents("{$s->dir}/error.log"));
                }
                usleep(100000);
            }
        }
        return $s;
    }

    /** Creates the test user (on a primary: a replica receives it through replication). */
    public function createUser(): void
    {
        $this->root()->exec("CREATE USER 'admin'@'%' IDENTIFIED BY '{$this->password}'");
        $this->root()->exec("GRANT ALL PRIVILEGES ON *.* TO 'admin'@'%' WITH GRANT OPTION");
    }

    public function port(): int
    {
        return $this->port;
    }

    public function root(): PDO
    {
        return new PDO("mysql:unix_socket={$this->dir}/mysqld.sock", 'root', '',
            [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 5]);
    }

    /** Follows $primary from the start of its binary log (read-only meanwhile). */
    public function replicate(MariaDbServer $primary): void
    {
        $root = $this->root();
        $root->exec('SET GLOBAL read_only = 1');
        $root->exec("CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {$primary->port()}, MASTER_USER = 'admin',
            MASTER_PASSWORD = '{$this->password}', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1");
        $root->exec('START SLAVE');
    }

    /** Waits until this replica has applied everything $primary has written so far. */
    public function catchUp(MariaDbServer $primary, float $seconds = 30): void
    {
        $gtid = (string) $primary->root()->query('SELECT @@gtid_binlog_pos')->fetchColumn();
        $waited = $this->root()->query("SELECT MASTER_GTID_WAIT('$gtid', $seconds)")->fetchColumn();
        if ((int) $waited !== 0) {
            throw new \RuntimeException("the replica did not reach $gtid within $seconds s");
        }
    }

    /** Promotion, as an operator or a managed service does it: stop following, take writes. */
    public function promote(): void
    {
        $root = $this->root();
        $root->exec('STOP SLAVE');
        $root->exec('RESET SLAVE ALL');
        $root->exec('SET GLOBAL read_only = 0');
    }

    /** The server dies (SIGKILL). */
    public function kill(): void
    {
        if (is_resource($this->proc)) {
            proc_terminate($this->proc, SIGKILL);
            proc_close($this->proc);
        }
    }

    public function stop(): void
    {
        if ($this->stopped) {
            return;
        }
        $this->stopped = true;
        $this->kill();
        if (str_starts_with($this->dir, sys_get_temp_dir() . '/mac-mariadb.')) {
            exec('rm -rf ' . escapeshellarg($this->dir));
        }
    }

    public function __destruct()
    {
        $this->stop();
    }
}
