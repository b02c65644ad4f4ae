<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use Matomo\ArchiveClaim\Reason;
use Matomo\ArchiveClaim\Verdict;

use function Matomo\ArchiveClaim\claim_invalidation;
use function Matomo\ArchiveClaim\in_progress;

final class InProgressTest extends ExtensionTestCase
{
    public function testListsInProgressRowsOldestFirstWithOwnerAndAge(): void
    {
        [$queued, $old, $new, $noStart, $mine] = $this->queue([
            ['idsite' => 1], ['idsite' => 2, 'report' => 'Goals'], ['idsite' => 3], ['idsite' => 4], ['idsite' => 5],
        ]);
        $this->claimAs($old, 'server2', '1234', 'NOW() - INTERVAL 2 HOUR');
        $this->claimAs($new, 'server3', '99', 'NOW() - INTERVAL 5 MINUTE');
        $this->pdo->exec("UPDATE {$this->table()} SET status = 1 WHERE idinvalidation = $noStart");
        $this->assertTrue(claim_invalidation($mine));

        $rows = in_progress();
        $this->assertSame([$old, $new, $mine], array_column($rows, 'idinvalidation'));
        $first = $rows[0];
        $this->assertSame(['idinvalidation', 'idarchive', 'name', 'idsite', 'date1', 'date2', 'period',
            'ts_invalidated', 'ts_started', 'status', 'report', 'processing_host', 'process_id', 'age_seconds',
            'verdict', 'reason'],
            array_keys($first));
        $this->assertSame(2, $first['idsite']);
        $this->assertSame('Goals', $first['report']);
        $this->assertSame('server2', $first['processing_host']);
        $this->assertSame('1234', $first['process_id']);
        $this->assertSame('2026-11-28', $first['date1']);
        $this->assertSame(1, $first['period']);
        $this->assertSame(1, $first['status']);
        $this->assertEqualsWithDelta(7200, $first['age_seconds'], 2);
        $this->assertSame((string) getmypid(), $rows[2]['process_id']);
        // Liveness, from here: another host that never registered proves nothing; this very
        // process is registered (it claimed) and runs.
        $this->assertSame([Verdict::UNKNOWN, Reason::REMOTE_UNREGISTERED], [$first['verdict'], $first['reason']]);
        $this->assertSame([Verdict::ALIVE, Reason::HEARTBEAT_FRESH], [$rows[2]['verdict'], $rows[2]['reason']]);
        array_map([self::class, 'assertNamed'], $rows);
    }

    /** The strings rows carry are exported as constants named after them, and stay as documented. */
    public function testVerdictsReasonsAndActionsAreConstants(): void
    {
        $constants = fn (string $class) => (new \ReflectionClass($class))->getConstants();
        $this->assertSame(['DEAD' => 'dead', 'ALIVE' => 'alive', 'UNKNOWN' => 'unknown'], $constants(Verdict::class));
        $this->assertSame(['RESET' => 'reset', 'DELETED_DUPLICATE' => 'deleted_duplicate', 'KEPT' => 'kept',
            'LOST_RACE' => 'lost_race', 'WOULD_RESET' => 'would_reset', 'WOULD_DELETE' => 'would_delete'],
            $constants(\Matomo\ArchiveClaim\Action::class));
        foreach ([Verdict::class, Reason::class, \Matomo\ArchiveClaim\Action::class] as $class) {
            $this->assertTrue((new \ReflectionClass($class))->isFinal(), $class);
            foreach ($constants($class) as $name => $value) {
                $this->assertSame(strtoupper($value), $name);
            }
        }
        foreach (['pid_gone', 'pid_reused', 'heartbeat_stale', 'timeout', 'host_declared_dead', 'heartbeat_fresh',
                     'pid_alive', 'remote_unregistered', 'implausible_pid'] as $documented) {
            $this->assertContains($documented, $constants(Reason::class));
        }
    }

    public function testFilters(): void
    {
        [$a, $b, $c] = $this->queue([['idsite' => 1], ['idsite' => 2], ['idsite' => 2]]);
        $this->claimAs($a, 'server1', '10', "'2026-11-28 10:00:00'");
        $this->claimAs($b, 'server2', '20', "'2026-11-28 11:00:00'");
        $this->claimAs($c, 'server2', '30', "'2026-11-28 12:00:00'");
        $ids = fn (array $f) => array_column(in_progress($f), 'idinvalidation');

        $this->assertSame([$b, $c], $ids(['idsites' => [2]]));
        $this->assertSame([$a], $ids(['hosts' => ['server1']]));
        $this->assertSame([$c], $ids(['started_after' => '2026-11-28 11:00:00']));
        $this->assertSame([$a, $b], $ids(['started_before' => '2026-11-28 12:00:00']));
        $this->assertSame([$b], $ids(['idsites' => ['2'], 'hosts' => ['server2'], 'started_before' => '2026-11-28 11:30:00']));
        $this->assertSame([], $ids(['idsites' => []]));
        $this->assertSame([$a, $b, $c], $ids([]));
    }

    public function testBadFiltersAreRefused(): void
    {
        $cases = [
            [['idsite' => [1]], \ValueError::class, "'idsite'"],
            [['idsites' => 1], \TypeError::class, 'idsites'],
            [['idsites' => [0]], \ValueError::class, 'positive'],
            [['hosts' => [42]], \ValueError::class, 'hosts'],
            [['started_after' => "2026-01-01' OR '1'='1"], \ValueError::class, 'started_after'],
            [[0 => 'x'], \ValueError::class, 'unknown option 0'],
        ];
        foreach ($cases as [$filters, $class, $needle]) {
            try {
                in_progress($filters);
                $this->fail('accepted ' . json_encode($filters));
            } catch (\Throwable $e) {
                $this->assertInstanceOf($class, $e, json_encode($filters));
                $this->assertStringContainsString($needle, $e->getMessage());
            }
        }
    }
}
