<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

/**
 * The chaos test's judge: what counts as two live processes working one invalidation. Its
 * verdicts must come from what happened, not from how the harness recorded it.
 */
final class WorkLogTest extends TestCase
{
    private string $file;

    protected function setUp(): void
    {
        $this->file = (string) tempnam(sys_get_temp_dir(), 'worklog');
    }

    protected function tearDown(): void
    {
        @unlink($this->file);
    }

    private function log(string ...$lines): void
    {
        file_put_contents($this->file, implode("\n", $lines) . "\n");
    }

    /**
     * As seen in a chaos run: a climulti:request child (s7 12), adopted by the server's init
     * after its archiver was killed, is killed mid-work; its parent and it being dead, the row
     * is released and s7 5 works it. The child's zombie, never collected, is picked and
     * "killed" again 10 s later: that is no second death, and the child's work ended at the
     * first.
     */
    public function testAProcessDiesOnceSoAKillOfItsZombieDoesNotStretchItsWork(): void
    {
        $this->log(
            '100.000000 start 531 s7 12',
            '102.000000 reaped 531 s7 4 background s7 3 dead pid_gone/reset age=2 started=-',
            '102.500000 start 531 s7 5',
            '102.600000 done 531 s7 5',
        );
        $deaths = [];
        WorkLog::died($deaths, 's7 3', 99.5);
        WorkLog::died($deaths, 's7 12', 101.0);
        WorkLog::died($deaths, 's7 12', 111.0); // its zombie

        $this->assertSame(['s7 3' => 99.5, 's7 12' => 101.0], $deaths);
        $work = WorkLog::analyse($this->file, $deaths);
        $this->assertSame([], $work['overlaps']);
        $this->assertSame([531], $work['done']);
        $this->assertSame([531], $work['seen'], 'a release is no work');
    }

    public function testWorkStartedBeforeTheFirstWorkerDiedIsStillAnOverlap(): void
    {
        $this->log(
            '100.000000 start 531 s7 12',
            '100.800000 start 531 s7 5',
            '100.900000 done 531 s7 5',
        );
        $deaths = [];
        WorkLog::died($deaths, 's7 12', 101.0);
        WorkLog::died($deaths, 's7 12', 111.0);

        $this->assertSame(['#531: s7 12 [100.000..101.000] and s7 5 [100.800..100.900]'],
            WorkLog::analyse($this->file, $deaths)['overlaps']);
    }

    public function testAServerPowerLossEndsTheWorkOfEveryProcessOnIt(): void
    {
        $this->log('100.000000 start 531 s7 12', '101.500000 start 531 s8 4', '101.600000 done 531 s8 4');
        $deaths = [];
        WorkLog::died($deaths, 's7', 101.0);

        $work = WorkLog::analyse($this->file, $deaths);
        $this->assertSame([], $work['overlaps']);
        $this->assertSame([], $work['unfinished']);
    }
}
