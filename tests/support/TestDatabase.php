<?php
/**
 * Throwaway databases on the test server named by MATOMO_ARCHIVE_CLAIM_TEST_DSN, each with a
 * Matomo-shaped archive_invalidations table, plus PDO connections that talk the way Matomo does.
 * Used by the PHPUnit suite, the worker scripts and the demo.
 */

declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;

final class TestDatabase
{
    /** Matomo 5.3+'s table, as its installer creates it. */
    public const INVALIDATIONS_DDL = <<<'SQL'
        CREATE TABLE `%sarchive_invalidations` (
          idinvalidation BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
          idarchive INTEGER UNSIGNED NULL,
          name VARCHAR(255) NOT NULL,
          idsite INTEGER UNSIGNED NOT NULL,
          date1 DATE NOT NULL,
          date2 DATE NOT NULL,
          period TINYINT UNSIGNED NOT NULL,
          ts_invalidated DATETIME NULL,
          ts_started DATETIME NULL,
          status TINYINT(1) UNSIGNED DEFAULT 0,
          `report` VARCHAR(255) NULL,
          processing_host VARCHAR(100) NULL DEFAULT NULL,
          process_id VARCHAR(15) NULL DEFAULT NULL,
          PRIMARY KEY(idinvalidation),
          INDEX index_idsite_dates_period_name(idsite, date1, period)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
        SQL;

    /** @return array{user:string,password:string,host:string,port:int} */
    public static function server(): array
    {
        $dsn = getenv('MATOMO_ARCHIVE_CLAIM_TEST_DSN');
        if ($dsn === false || $dsn === '') {
            throw new \RuntimeException(
                'MATOMO_ARCHIVE_CLAIM_TEST_DSN is not set: run the tests through tests/support/with-mariadb.sh'
            );
        }
        $p = parse_url($dsn);
        return [
            'user' => rawurldecode($p['user'] ?? 'root'),
            'password' => rawurldecode($p['pass'] ?? ''),
            'host' => $p['host'] ?? '127.0.0.1',
            'port' => (int) ($p['port'] ?? 3306),
        ];
    }

    public static function admin(?string $dbname = null): PDO
    {
        $s = self::server();
        $dsn = "mysql:host={$s['host']};port={$s['port']};charset=utf8mb4" . ($dbname ? ";dbname=$dbname" : '');
        return new PDO($dsn, $s['user'], $s['password'], [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
    }

    /**
     * A new database with the invalidations table; returns Matomo's [database] settings for it.
     *
     * @return array<string, string>
     */
    public static function create(string $prefix = 'matomo_', bool $before53 = false): array
    {
        $dbname = 'mac_' . bin2hex(random_bytes(6));
        $admin = self::admin();
        $admin->exec("CREATE DATABASE `$dbname`");
        $ddl = sprintf(self::INVALIDATIONS_DDL, $prefix);
        if ($before53) {
            $ddl = preg_replace('/^\s*(processing_host|process_id) .*\n/m', '', $ddl);
        }
        self::admin($dbname)->exec($ddl);
        $s = self::server();
        return [
            'host' => $s['host'],
            'port' => (string) $s['port'],
            'username' => $s['user'],
            'password' => $s['password'],
            'dbname' => $dbname,
            'tables_prefix' => $prefix,
            'adapter' => 'PDO\\MYSQL',
            'charset' => 'utf8mb4',
        ];
    }

    public static function drop(array $config): void
    {
        self::admin()->exec("DROP DATABASE IF EXISTS `{$config['dbname']}`");
    }

    /** A connection configured as Matomo's Db adapter configures its own. */
    public static function matomoPdo(array $config): PDO
    {
        $pdo = new PDO(
            "mysql:host={$config['host']};port={$config['port']};dbname={$config['dbname']};charset=utf8mb4",
            $config['username'],
            $config['password'],
            [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_EMULATE_PREPARES => true]
        );
        $pdo->exec("SET sql_mode = 'NO_AUTO_VALUE_ON_ZERO'");
        return $pdo;
    }

    /**
     * Inserts queued invalidations; returns their ids.
     *
     * @param array<int, array<string, mixed>> $rows column => value overrides per row
     * @return int[]
     */
    public static function queue(PDO $pdo, string $prefix, array $rows): array
    {
        $defaults = [
            'idarchive' => null, 'name' => 'done', 'idsite' => 1, 'date1' => '2026-11-28',
            'date2' => '2026-11-28', 'period' => 1, 'ts_invalidated' => '2026-11-28 23:00:00',
            'status' => 0, 'report' => null,
        ];
        $ids = [];
        foreach ($rows as $row) {
            $row = array_merge($defaults, $row);
            $cols = implode(', ', array_map(fn ($c) => "`$c`", array_keys($row)));
            $marks = implode(', ', array_fill(0, count($row), '?'));
            $pdo->prepare("INSERT INTO `{$prefix}archive_invalidations` ($cols) VALUES ($marks)")
                ->execute(array_values($row));
            $ids[] = (int) $pdo->lastInsertId();
        }
        return $ids;
    }

    /** Bulk variant for thousands of identical-shaped rows (distinct sites and dates). */
    public static function queueMany(PDO $pdo, string $prefix, int $count): array
    {
        $values = [];
        for ($i = 0; $i < $count; $i++) {
            $site = 1 + $i % 50;
            $day = date('Y-m-d', 1700000000 + intdiv($i, 50) * 86400);
            $values[] = "(NULL, 'done', $site, '$day', '$day', 1, NOW(), 0, NULL)";
        }
        $first = null;
        foreach (array_chunk($values, 1000) as $chunk) {
            $pdo->exec("INSERT INTO `{$prefix}archive_invalidations`
                (idarchive, name, idsite, date1, date2, period, ts_invalidated, status, report) VALUES "
                . implode(',', $chunk));
            $first ??= (int) $pdo->lastInsertId();
        }
        return range($first, $first + $count - 1);
    }

    /** @return array<int, array<string, mixed>> rows by id */
    public static function rows(PDO $pdo, string $prefix): array
    {
        $out = [];
        foreach ($pdo->query("SELECT * FROM `{$prefix}archive_invalidations` ORDER BY idinvalidation") as $r) {
            $out[(int) $r['idinvalidation']] = $r;
        }
        return $out;
    }

    /** Where the built extension is, for child PHP processes. */
    public static function extensionPath(): string
    {
        $path = getenv('MATOMO_ARCHIVE_CLAIM_EXT');
        if ($path !== false && is_file($path)) {
            return $path;
        }
        // The copy this PHP process loaded.
        foreach (file('/proc/self/maps') ?: [] as $line) {
            if (preg_match('#\s(/\S*matomo_archive_claim\S*\.so)$#', trim($line), $m)) {
                return $m[1];
            }
        }
        throw new \RuntimeException('set MATOMO_ARCHIVE_CLAIM_EXT to the built .so');
    }

    /** The command line that starts PHP with the extension loaded. */
    public static function php(array $args, bool $withExtension = true): array
    {
        $cmd = [PHP_BINARY];
        if ($withExtension) {
            $cmd[] = '-d';
            $cmd[] = 'extension=' . self::extensionPath();
        }
        return array_merge($cmd, $args);
    }
}
