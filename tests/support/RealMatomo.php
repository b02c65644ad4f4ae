<?php
/**
 * A real Matomo 5.2 for the end-to-end tests: installed from ../shared/matomo (beside the
 * repository) into a temporary directory, on its own database of the test server, with the
 * ArchiveClaim plugin copied in as an operator would. Runs its console with or without the
 * extension; the extension reaches the climulti:request children Matomo spawns the way a
 * php.ini line would (an extra ini directory in PHP_INI_SCAN_DIR), since CliMulti starts them
 * with plain `php`.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;

final class RealMatomo
{
    public string $root;
    public string $db;
    private string $iniDir;
    private ?PDO $pdo = null;

    private function __construct(private string $dir)
    {
        $this->root = "$dir/matomo";
        $this->db = 'e2e_matomo_' . getmypid();
        $this->iniDir = "$dir/php-ini";
    }

    /** ../shared/matomo relative to the repository root (CI clones the repository beside shared/). */
    public static function sharedDir(): ?string
    {
        $dir = dirname(__DIR__, 3) . '/shared/matomo';
        return is_file("$dir/install.sh") && is_file("$dir/matomo-5.2.0-b5.tar.xz") ? $dir : null;
    }

    /**
     * @param array<string, string|int> $env install.sh settings (SITES, DAYS, VISITS_PER_DAY, START)
     * @param array<string, string|int> $ini matomo_archive_claim.* for every PHP "with the extension"
     */
    public static function install(array $env, array $ini): self
    {
        $m = new self(sys_get_temp_dir() . '/matomo-archive-claim-e2e.' . getmypid() . '.' . bin2hex(random_bytes(3)));
        mkdir($m->iniDir, 0777, true);
        $lines = ['extension=' . TestDatabase::extensionPath()];
        foreach ($ini as $k => $v) {
            $lines[] = "matomo_archive_claim.$k=$v";
        }
        file_put_contents("$m->iniDir/zz-matomo-archive-claim.ini", implode("\n", $lines) . "\n");
        $s = TestDatabase::server();
        $url = sprintf('mysql://%s:%s@%s:%d/', rawurlencode($s['user']), rawurlencode($s['password']), $s['host'], $s['port']);
        [$code, $out] = self::run([self::sharedDir() . '/install.sh', $m->dir],
            ['MATOMO_DB_URL' => $url, 'DB' => $m->db, 'PATH' => getenv('PATH'), 'HOME' => getenv('HOME') ?: '/tmp'] + $env);
        if ($code !== 0) {
            $m->remove();
            throw new \RuntimeException("install.sh failed ($code):\n$out");
        }
        return $m;
    }

    public function remove(): void
    {
        TestDatabase::admin()->exec("DROP DATABASE IF EXISTS `$this->db`");
        if (str_contains($this->dir, 'matomo-archive-claim-e2e.')) {
            exec('rm -rf ' . escapeshellarg($this->dir));
        }
    }

    /** The plugin, as the README tells an operator: copied into plugins/. */
    public function copyPlugin(): void
    {
        exec('cp -r ' . escapeshellarg(dirname(__DIR__, 2) . '/php/ArchiveClaim') . ' ' . escapeshellarg("$this->root/plugins/"), $o, $code);
        if ($code !== 0) {
            throw new \RuntimeException('copying the plugin failed');
        }
    }

    /** The environment of a PHP with (or without) the extension, as if php.ini loaded it. */
    public function env(bool $withExtension): array
    {
        $env = ['PATH' => getenv('PATH'), 'HOME' => getenv('HOME') ?: '/tmp'];
        if ($withExtension) {
            $env['PHP_INI_SCAN_DIR'] = ':' . $this->iniDir;
        }
        return $env;
    }

    /** The command line of `php console ARGS...`. */
    public function consoleCommand(array $args): array
    {
        return array_merge([PHP_BINARY, "$this->root/console"], $args);
    }

    /** @return array{0: int, 1: string} exit code, stdout and stderr */
    public function console(array $args, bool $withExtension = true): array
    {
        return self::run($this->consoleCommand($args), $this->env($withExtension));
    }

    /**
     * Before an archiving run measured or judged from scratch: no archives, no invalidations,
     * no run's shared site queue, no registrations.
     */
    public function resetArchives(): void
    {
        $pdo = $this->pdo();
        foreach ($pdo->query("SHOW TABLES LIKE 'matomo_archive\\_%'")->fetchAll(PDO::FETCH_COLUMN) as $t) {
            if (preg_match('/^matomo_archive_(numeric|blob)_\d{4}_\d{2}$/', $t)) {
                $pdo->exec("TRUNCATE `$t`");
            }
        }
        $pdo->exec('DELETE FROM matomo_archive_invalidations');
        $pdo->exec("DELETE FROM matomo_option WHERE option_name LIKE 'SharedSiteIdsToArchive%'");
        if ($pdo->query("SHOW TABLES LIKE 'matomo_archive_claim_process'")->fetchColumn()) {
            $pdo->exec('DELETE FROM matomo_archive_claim_process');
        }
    }

    /** @return array{0: int, 1: string} */
    public function php(array $args, bool $withExtension = true): array
    {
        return self::run(array_merge([PHP_BINARY], $args), $this->env($withExtension));
    }

    /** @return array{0: int, 1: string} */
    public static function run(array $cmd, array $env): array
    {
        $proc = proc_open($cmd, [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['redirect', 1]], $pipes, null, $env);
        $out = stream_get_contents($pipes[1]);
        fclose($pipes[1]);
        return [proc_close($proc), (string) $out];
    }

    public function pdo(): PDO
    {
        if ($this->pdo === null) {
            $this->pdo = TestDatabase::admin($this->db);
            $this->pdo->exec("SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO'");
        }
        return $this->pdo;
    }

    /** Forgets the connection (after a database restart); the next pdo() connects again. */
    public function reconnect(): void
    {
        $this->pdo = null;
    }

    /** Queues an invalidation (Matomo's columns; defaults: a day of site 2); returns its id. */
    public function queueRow(array $row): int
    {
        $row += ['idarchive' => null, 'name' => 'done', 'idsite' => 2, 'date1' => '2024-02-05', 'date2' => '2024-02-05',
            'period' => 1, 'status' => 0, 'report' => null];
        $cols = implode(', ', array_map(fn ($c) => "`$c`", array_keys($row)));
        $marks = implode(', ', array_fill(0, count($row), '?'));
        $this->pdo()->prepare("INSERT INTO matomo_archive_invalidations ($cols, ts_invalidated) VALUES ($marks, NOW())")
            ->execute(array_values($row));
        return (int) $this->pdo()->lastInsertId();
    }

    /** Marks an invalidation in progress as a claimer on $host with $pid would (Matomo 5.3's statement). */
    public function claimAs(int $id, string $host, string $pid, string $started = 'NOW()'): void
    {
        $this->pdo()->prepare("UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = ?,
            ts_started = $started WHERE idinvalidation = ?")->execute([$host, $pid, $id]);
    }

    /** Matomo's [database] settings, for configure() in the test process. */
    public function database(): array
    {
        $s = TestDatabase::server();
        return ['host' => $s['host'], 'port' => (string) $s['port'], 'username' => $s['user'], 'password' => $s['password'],
            'dbname' => $this->db, 'tables_prefix' => 'matomo_'];
    }

    /**
     * A fingerprint of every file Matomo ships (not config/config.ini.php, which Matomo writes
     * itself, not tmp/, and not the plugin we copied in).
     */
    public function coreChecksum(): string
    {
        $hashes = [];
        $it = new \RecursiveIteratorIterator(new \RecursiveDirectoryIterator($this->root, \FilesystemIterator::SKIP_DOTS));
        foreach ($it as $file) {
            $rel = substr($file->getPathname(), strlen($this->root) + 1);
            if ($rel === 'config/config.ini.php' || str_starts_with($rel, 'tmp/') || str_starts_with($rel, 'plugins/ArchiveClaim/')
                || !$file->isFile()) {
                continue;
            }
            $hashes[$rel] = md5_file($file->getPathname());
        }
        ksort($hashes);
        return count($hashes) . ':' . md5(serialize($hashes));
    }

    public function log(): string
    {
        return (string) @file_get_contents("$this->root/tmp/logs/matomo.log");
    }

    /** Sets [section] key = value in config.ini.php (Matomo's own settings file, as an operator edits it). */
    public function setConfig(string $section, string $key, string $value): void
    {
        $file = "$this->root/config/config.ini.php";
        $ini = file_get_contents($file);
        $line = "$key = $value";
        if (preg_match('/^\[' . preg_quote($section, '/') . '\]$/m', $ini)) {
            $pattern = '/(^\[' . preg_quote($section, '/') . '\]$(?:(?!^\[).)*?)^' . preg_quote($key, '/') . ' = [^\n]*\n?/ms';
            $ini = preg_replace($pattern, '$1', $ini);
            $ini = preg_replace('/^\[' . preg_quote($section, '/') . '\]$/m', "[$section]\n$line", $ini);
        } else {
            $ini .= "\n[$section]\n$line\n";
        }
        file_put_contents($file, $ini);
    }

    /**
     * Serves this Matomo with PHP's built-in web server on a free port of 127.0.0.1 (a trusted
     * host from then on), with or without the extension; returns its base URL and a function
     * that stops it.
     *
     * @param string|null $log file for the server's output (its request log and PHP's errors)
     * @return array{0: string, 1: \Closure(): void}
     */
    public function serve(bool $withExtension, ?string $log = null): array
    {
        $port = (int) explode(':', stream_socket_get_name(stream_socket_server('tcp://127.0.0.1:0'), false))[1];
        $file = "$this->root/config/config.ini.php";
        file_put_contents($file, preg_replace('/^\[General\]$/m', "[General]\ntrusted_hosts[] = \"127.0.0.1:$port\"", file_get_contents($file), 1));
        $out = ['file', $log ?? '/dev/null', 'a'];
        $server = proc_open([PHP_BINARY, '-S', "127.0.0.1:$port", '-t', $this->root], [0 => ['file', '/dev/null', 'r'], 1 => $out, 2 => $out],
            $p, null, $this->env($withExtension));
        for ($i = 0; $i < 50 && !@fsockopen('127.0.0.1', $port); $i++) {
            usleep(100000);
        }
        return ["http://127.0.0.1:$port/", function () use ($server): void {
            proc_terminate($server);
            proc_close($server);
        }];
    }

    /** Tracks visits through Matomo's real tracker (matomo.php under `php -S`), as install.sh does. */
    public function trackVisits(int $idSite, string $day, int $visits): void
    {
        [$url, $stop] = $this->serve(false);
        try {
            [$code, $out] = self::run(['python3', self::sharedDir() . '/send_visits.py', "{$url}matomo.php",
                trim(file_get_contents("$this->root/tmp/e2e-token")), (string) $idSite, $day, '1', (string) $visits],
                ['PATH' => getenv('PATH')]);
            if ($code !== 0) {
                throw new \RuntimeException("send_visits.py failed: $out");
            }
        } finally {
            $stop();
        }
    }

    /**
     * Copies the day's tracked visits of a site onto the same day until there are 2^$doublings
     * times as many: a day whose archiving takes seconds, without tracking all of it over HTTP.
     */
    public function multiplyVisits(int $idSite, string $day, int $doublings): int
    {
        $pdo = $this->pdo();
        $cols = $pdo->query("SELECT GROUP_CONCAT(CONCAT('`', COLUMN_NAME, '`') ORDER BY ORDINAL_POSITION)
            FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'matomo_log_visit'
            AND COLUMN_NAME <> 'idvisit'")->fetchColumn();
        for ($i = 0; $i < $doublings; $i++) {
            $pdo->exec("INSERT INTO matomo_log_visit ($cols) SELECT $cols FROM matomo_log_visit
                WHERE idsite = $idSite AND visit_last_action_time >= '$day' AND visit_last_action_time < '$day' + INTERVAL 1 DAY");
        }
        return (int) $pdo->query("SELECT COUNT(*) FROM matomo_log_visit WHERE idsite = $idSite
            AND visit_last_action_time >= '$day' AND visit_last_action_time < '$day' + INTERVAL 1 DAY")->fetchColumn();
    }

    /** Copies up to $limit of a site's visits from one day onto another (both action times moved). */
    public function copyVisits(int $idSite, string $from, string $to, int $limit): void
    {
        $pdo = $this->pdo();
        $cols = $pdo->query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
            AND TABLE_NAME = 'matomo_log_visit' AND COLUMN_NAME <> 'idvisit' ORDER BY ORDINAL_POSITION")->fetchAll(PDO::FETCH_COLUMN);
        $select = array_map(fn ($c) => in_array($c, ['visit_last_action_time', 'visit_first_action_time'], true)
            ? "`$c` + INTERVAL DATEDIFF('$to', '$from') DAY" : "`$c`", $cols);
        $pdo->exec('INSERT INTO matomo_log_visit (`' . implode('`, `', $cols) . '`) SELECT ' . implode(', ', $select)
            . " FROM matomo_log_visit WHERE idsite = $idSite AND visit_last_action_time >= '$from'
            AND visit_last_action_time < '$from' + INTERVAL 1 DAY LIMIT $limit");
    }
    /**
     * Copies a day's visits of one site onto another site, $times over: a second site with a
     * day that takes seconds to archive, without tracking it again.
     */
    public function copyVisitsToSite(int $from, int $to, string $day, int $times): int
    {
        $pdo = $this->pdo();
        $cols = $pdo->query("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
            AND TABLE_NAME = 'matomo_log_visit' AND COLUMN_NAME <> 'idvisit' ORDER BY ORDINAL_POSITION")->fetchAll(PDO::FETCH_COLUMN);
        $select = array_map(fn ($c) => $c === 'idsite' ? $to : "`$c`", $cols);
        for ($i = 0; $i < $times; $i++) {
            $pdo->exec('INSERT INTO matomo_log_visit (`' . implode('`, `', $cols) . '`) SELECT ' . implode(', ', $select)
                . " FROM matomo_log_visit WHERE idsite = $from AND visit_last_action_time >= '$day'
                AND visit_last_action_time < '$day' + INTERVAL 1 DAY");
        }
        return (int) $pdo->query("SELECT COUNT(*) FROM matomo_log_visit WHERE idsite = $to
            AND visit_last_action_time >= '$day' AND visit_last_action_time < '$day' + INTERVAL 1 DAY")->fetchColumn();
    }
}
