<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\configure;
use function Matomo\ArchiveClaim\in_progress;

/**
 * Every argument and option of every function, wrong in every way we could think of: each gets
 * its typed error, and neither table changes (checksums before and after).
 */
final class BadInputTest extends ExtensionTestCase
{
    private const NS = 'Matomo\\ArchiveClaim\\';

    /** @return array<string, array{0: string, 1: array, 2: class-string, 3: string}> */
    public static function cases(): array
    {
        $db = ['host' => '127.0.0.1', 'dbname' => 'm'];
        $cases = [
            // configure()
            'configure: not an array' => ['configure', ['host=x'], \TypeError::class, ''],
            'configure: integer key' => ['configure', [$db + [0 => 'x']], \ValueError::class, 'unknown option 0'],
            'configure: port too big' => ['configure', [$db + ['port' => 65536]], \ValueError::class, 'port'],
            'configure: port negative' => ['configure', [$db + ['port' => -1]], \ValueError::class, 'port'],
            'configure: port words' => ['configure', [$db + ['port' => 'mysql']], \ValueError::class, 'port'],
            'configure: port array' => ['configure', [$db + ['port' => [1]]], \TypeError::class, 'port'],
            'configure: password array' => ['configure', [$db + ['password' => ['x']]], \TypeError::class, 'password'],
            'configure: object value' => ['configure', [$db + ['username' => new \stdClass()]], \TypeError::class, 'only scalars'],
            'configure: no dbname' => ['configure', [['host' => 'h']], \ValueError::class, 'dbname'],
            'configure: nothing' => ['configure', [[]], \ValueError::class, 'host'],
            'configure: timeout 0' => ['configure', [$db + ['read_timeout' => 0]], \ValueError::class, 'read_timeout'],
            'configure: charset injection' => ['configure', [$db + ['charset' => 'utf8; DROP TABLE x']], \ValueError::class, 'charset'],
            'configure: ssl_key without ssl_cert' => ['configure', [$db + ['enable_ssl' => 1, 'ssl_key' => '/etc/ssl/client-key.pem']], \Matomo\ArchiveClaim\ConfigurationException::class, 'ssl_key'],
            'configure: ssl_cert without ssl_key' => ['configure', [$db + ['enable_ssl' => '1', 'ssl_cert' => '/etc/ssl/client.pem']], \Matomo\ArchiveClaim\ConfigurationException::class, 'ssl_cert'],
            'configure: ssl_cert alone' => ['configure', [$db + ['enable_ssl' => true, 'ssl_cert' => '/etc/ssl/c.pem']], \Matomo\ArchiveClaim\ConfigurationException::class, 'ssl_key'],
            'configure: ssl_ca array' => ['configure', [$db + ['enable_ssl' => 1, 'ssl_ca' => ['/a.pem']]], \TypeError::class, 'ssl_ca'],
            'configure: deep nesting' => ['configure', [$db + ['ssl_ca' => [[[[['x']]]]]]], \ValueError::class, 'nest'],
            // claim_invalidation()
            'claim: zero' => ['claim_invalidation', [0], \ValueError::class, 'idinvalidation'],
            'claim: negative' => ['claim_invalidation', [-7], \ValueError::class, 'idinvalidation'],
            'claim: string' => ['claim_invalidation', ['7'], \TypeError::class, ''],
            'claim: null' => ['claim_invalidation', [null], \TypeError::class, ''],
            'claim: array' => ['claim_invalidation', [[7]], \TypeError::class, ''],
            'claim: float' => ['claim_invalidation', [7.5], \TypeError::class, ''],
            // release / complete
            'release: not an array' => ['release_invalidations', [7], \TypeError::class, ''],
            'complete: not an array' => ['complete_invalidations', ['7'], \TypeError::class, ''],
            // in_progress()
            'in_progress: string' => ['in_progress', ['idsites=1'], \TypeError::class, ''],
            'in_progress: started_before garbage' => ['in_progress', [['started_before' => '2026-99']], \ValueError::class, 'started_before'],
            'in_progress: hosts nested' => ['in_progress', [['hosts' => [['a']]]], \ValueError::class, 'hosts'],
            // reap_orphans()
            'reap: unknown key' => ['reap_orphans', [['timeout' => 60, 'dry-run' => true]], \ValueError::class, "'dry-run'"],
            'reap: timeout negative' => ['reap_orphans', [['timeout' => -60]], \ValueError::class, 'timeout'],
            'reap: timeout huge' => ['reap_orphans', [['timeout' => PHP_INT_MAX]], \ValueError::class, 'timeout'],
            'reap: lease float' => ['reap_orphans', [['lease' => 1.5]], \TypeError::class, 'lease'],
            'reap: force string' => ['reap_orphans', [['force' => 'true']], \TypeError::class, 'force'],
            'reap: idsites zero' => ['reap_orphans', [['idsites' => [0]]], \ValueError::class, 'positive'],
            'reap: site_timeouts zero' => ['reap_orphans', [['site_timeouts' => [1 => 0]]], \ValueError::class, 'site_timeouts'],
            'reap: only_hosts empty string' => ['reap_orphans', [['only_hosts' => ['']]], \ValueError::class, 'only_hosts'],
            'reap: started_after sql' => ['reap_orphans', [['started_after' => "0' OR '1'='1"]], \ValueError::class, 'started_after'],
            'reap: impossible date' => ['reap_orphans', [['started_after' => '2026-13-45 99:99:99']], \ValueError::class, 'started_after'],
            'in_progress: impossible date' => ['in_progress', [['started_before' => '2026-02-30']], \ValueError::class, 'started_before'],
            'in_progress: limit zero' => ['in_progress', [['limit' => 0]], \ValueError::class, 'limit'],
            'in_progress: limit float' => ['in_progress', [['limit' => 1.5]], \TypeError::class, 'limit'],
            'in_progress: after not a row' => ['in_progress', [['after' => 7]], \TypeError::class, 'after'],
            'in_progress: after without ts_started' => ['in_progress', [['after' => ['idinvalidation' => 7]]], \ValueError::class, 'after'],
            'in_progress: after impossible time' => ['in_progress', [['after' => ['idinvalidation' => 7, 'ts_started' => '2026-02-30 00:00:00']]], \ValueError::class, 'after'],
            'in_progress: unix seconds negative' => ['in_progress', [['started_after' => -1]], \ValueError::class, 'started_after'],
            // install_schema()
            'install_schema: unknown key' => ['install_schema', [['idx' => true]], \ValueError::class, "'idx'"],
            'install_schema: index string' => ['install_schema', [['index' => 'yes']], \TypeError::class, 'index'],
        ];
        foreach (["x`; DROP TABLE matomo_archive_invalidations; --", "a'b", 'a"b', "a\0b", 'matomo.', '../x', 'é_', ' matomo_', str_repeat('x', 41)] as $i => $prefix) {
            $cases["configure: hostile prefix #$i"] = ['configure', [$db + ['tables_prefix' => $prefix]], \ValueError::class, 'tables_prefix'];
        }
        return $cases;
    }

    /** @dataProvider cases */
    public function testBadInputGetsItsTypedErrorAndChangesNothing(string $function, array $args, string $class, string $needle): void
    {
        [$dead, $live] = $this->queue([['idsite' => 1], ['idsite' => 2]]);
        $this->claimAs($dead, gethostname(), (string) $this->goneLocalPid());
        $this->assertTrue(claim_invalidation($live)); // registers: the registry table exists too
        $before = $this->checksums();
        try {
            (self::NS . $function)(...$args);
            $this->fail("$function accepted " . var_export($args, true));
        } catch (\Throwable $e) {
            $this->assertInstanceOf($class, $e, get_class($e) . ': ' . $e->getMessage());
            $this->assertStringContainsString($needle, $e->getMessage());
            $this->assertStringNotContainsString($this->config['password'], $e->getMessage());
        }
        $this->assertSame($before, $this->checksums(), 'nothing changed');
        // And the extension still works with the settings it had.
        $this->assertCount(2, in_progress());
    }

    public function testHostileStringsAreDataNotSql(): void
    {
        [$id] = $this->queue([[]]);
        $this->claimAs($id, "server' OR '1'='1", '5');
        $before = $this->checksums();
        $this->assertSame([], in_progress(['hosts' => ["x' OR '1'='1"]]));
        $this->assertSame([$id], array_column(in_progress(['hosts' => ["server' OR '1'='1"]]), 'idinvalidation'));
        $report = \Matomo\ArchiveClaim\reap_orphans(['only_hosts' => ["') OR 1=1 -- ", "\0", str_repeat('h', 10000)]]);
        $this->assertSame(0, $report['examined']);
        $this->assertSame($before, $this->checksums());
        configure($this->config + ['dbname' => $this->config['dbname']]);
    }

    /** The tables as bad input could change them (a heartbeat's own tick may move heartbeat_at). */
    private function checksums(): array
    {
        $registry = $this->pdo->query("SHOW TABLES LIKE 'matomo_archive_claim_process'")->fetchColumn();
        return [
            $this->pdo->query('CHECKSUM TABLE `matomo_archive_invalidations`')->fetch(\PDO::FETCH_NUM)[1],
            $registry === false ? null : $this->pdo->query('SELECT GROUP_CONCAT(CONCAT_WS(\'|\', idprocess, host, pid, boot_id, pid_namespace, start_ticks,
                time_zone, works_for, registered_at) ORDER BY idprocess) FROM `matomo_archive_claim_process`')->fetchColumn(),
        ];
    }
}
