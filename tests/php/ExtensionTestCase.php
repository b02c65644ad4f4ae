<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PDO;
use PHPUnit\Framework\TestCase;

use Matomo\ArchiveClaim\Action;
use Matomo\ArchiveClaim\Reason;
use Matomo\ArchiveClaim\Verdict;

use function Matomo\ArchiveClaim\configure;

/**
 * Each test gets a fresh database with a Matomo table, the extension configured for it, and a
 * PDO connection that behaves like Matomo's.
 */
abstract class ExtensionTestCase extends TestCase
{
    protected const PREFIX = 'matomo_';

    /** @var array<string, string> */
    protected array $config;
    protected PDO $pdo;

    protected function setUp(): void
    {
        $this->config = TestDatabase::create(static::PREFIX, $this->createPre53Table());
        $this->pdo = TestDatabase::matomoPdo($this->config);
        configure($this->config);
    }

    protected function tearDown(): void
    {
        TestDatabase::drop($this->config);
    }

    protected function createPre53Table(): bool
    {
        return false;
    }

    protected function table(): string
    {
        return '`' . static::PREFIX . 'archive_invalidations`';
    }

    /** @return int[] */
    protected function queue(array $rows): array
    {
        return TestDatabase::queue($this->pdo, static::PREFIX, $rows);
    }

    protected function row(int $id): ?array
    {
        $s = $this->pdo->prepare("SELECT * FROM {$this->table()} WHERE idinvalidation = ?");
        $s->execute([$id]);
        $r = $s->fetch(PDO::FETCH_ASSOC);
        return $r === false ? null : $r;
    }

    /** Makes a row look claimed by someone else. */
    protected function claimAs(int $id, ?string $host, ?string $pid, string $startedSql = 'NOW()'): void
    {
        $this->pdo->prepare("UPDATE {$this->table()} SET status = 1, processing_host = ?, process_id = ?,
            ts_started = $startedSql WHERE idinvalidation = ?")->execute([$host, $pid, $id]);
    }

    protected function tableChecksum(): string
    {
        return md5(serialize(TestDatabase::rows($this->pdo, static::PREFIX)));
    }

    /**
     * Runs PHP code in a child process with the extension loaded; returns [exit code, stdout, stderr].
     *
     * @return array{0:int,1:string,2:string}
     */
    protected function runPhp(string $code, array $iniSettings = [], array $env = []): array
    {
        $args = [];
        foreach ($iniSettings as $k => $v) {
            $args[] = '-d';
            $args[] = "$k=\"$v\"";
        }
        $args[] = '-r';
        $args[] = $code;
        return $this->runCommand(TestDatabase::php($args), $env);
    }

    /**
     * Runs a command to its end; returns [exit code, stdout, stderr].
     *
     * @return array{0:int,1:string,2:string}
     */
    protected function runCommand(array $cmd, array $env = []): array
    {
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $env ?: null);
        $out = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        fclose($pipes[1]);
        fclose($pipes[2]);
        return [proc_close($proc), $out, $err];
    }

    /** A pid that belonged to a process of this host a moment ago and is free now. */
    protected function goneLocalPid(): int
    {
        $pid = (int) shell_exec(escapeshellarg(PHP_BINARY) . ' -n -r "echo getmypid();"');
        $this->assertFalse(file_exists("/proc/$pid"));
        return $pid;
    }

    /** @return array<int, array<string, mixed>> reap report rows by id */
    /** The rows of a reap report by id; every verdict, reason and action must be a constant. */
    protected static function byId(array $report): array
    {
        foreach ($report['rows'] as $row) {
            self::assertNamed($row);
        }
        return array_column($report['rows'], null, 'idinvalidation');
    }

    protected static function assertNamed(array $row): void
    {
        foreach (['verdict' => Verdict::class, 'reason' => Reason::class, 'action' => Action::class] as $key => $class) {
            if (array_key_exists($key, $row)) {
                self::assertContains($row[$key], (new \ReflectionClass($class))->getConstants(), "$key of a row is a $class constant");
            }
        }
    }
}
