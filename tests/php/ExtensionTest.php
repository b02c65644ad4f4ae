<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

use function Matomo\ArchiveClaim\identity;

/** Loading, reflection, phpinfo() and identity(): what needs no database. */
final class ExtensionTest extends TestCase
{
    public function testEveryFunctionIsExportedInTheNamespace(): void
    {
        foreach (['configure', 'identity', 'claim_invalidation', 'release_invalidations',
                  'complete_invalidations', 'in_progress', 'install_schema'] as $fn) {
            $this->assertTrue(function_exists("Matomo\\ArchiveClaim\\$fn"), $fn);
        }
        $claim = new \ReflectionFunction('Matomo\ArchiveClaim\claim_invalidation');
        $this->assertSame('int', (string) $claim->getParameters()[0]->getType());
        $this->assertSame('bool', (string) $claim->getReturnType());
    }

    public function testExceptionsFormAHierarchyUnderRuntimeException(): void
    {
        $this->assertTrue(is_subclass_of('Matomo\ArchiveClaim\Exception', \RuntimeException::class));
        foreach (['Configuration', 'Connection', 'Query', 'Schema'] as $kind) {
            $class = "Matomo\\ArchiveClaim\\{$kind}Exception";
            $this->assertTrue(is_subclass_of($class, 'Matomo\ArchiveClaim\Exception'), $class);
            // Userland can build and rethrow them like any SPL exception.
            $e = new $class('message', 1146);
            $this->assertSame('message', $e->getMessage());
            $this->assertSame(1146, $e->getCode());
        }
    }

    public function testIdentityIsThatOfThisPhpProcess(): void
    {
        $me = identity();
        $this->assertSame(['host', 'pid', 'started_at', 'start_ticks', 'boot_id', 'pid_namespace', 'works_for'], array_keys($me));
        $stat = file_get_contents('/proc/self/stat');
        $this->assertSame((int) preg_split('/\s+/', substr($stat, strrpos($stat, ')') + 2))[19], $me['start_ticks']);
        $this->assertNull($me['works_for'], 'PHPUnit is no archiving child');
        $this->assertSame(gethostname(), $me['host']);
        $this->assertSame(getmypid(), $me['pid']);
        $this->assertSame(trim(file_get_contents('/proc/sys/kernel/random/boot_id')), $me['boot_id']);
        $this->assertSame((int) preg_replace('/\D/', '', readlink('/proc/self/ns/pid')), $me['pid_namespace']);
        // This process started before this test, and no more than an hour ago.
        $this->assertIsFloat($me['started_at']);
        $this->assertLessThanOrEqual(microtime(true) + 1, $me['started_at']);
        $this->assertGreaterThan(microtime(true) - 3600, $me['started_at']);
    }

    public function testIdentityOfAForkedChildIsTheChilds(): void
    {
        $parent = identity();
        $pipe = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        $pid = pcntl_fork();
        if ($pid === 0) {
            fwrite($pipe[1], json_encode([identity(), getmypid()]));
            posix_kill(getmypid(), SIGKILL); // skip PHPUnit's shutdown in the child
        }
        fclose($pipe[1]);
        [$child, $childPid] = json_decode(stream_get_contents($pipe[0]), true);
        pcntl_waitpid($pid, $status);
        $this->assertSame($pid, $childPid);
        $this->assertSame($pid, $child['pid']);
        $this->assertNotSame($parent['pid'], $child['pid']);
        $this->assertGreaterThanOrEqual($parent['started_at'], $child['started_at']);
    }

    public function testIdentityInsideANewHostAndPidNamespace(): void
    {
        if (posix_geteuid() !== 0) {
            $this->markTestSkipped('unshare --uts --pid needs root');
        }
        $cmd = array_merge(['unshare', '--uts', '--pid', '--fork', '--mount-proc', 'sh', '-c',
            'hostname ns-test && exec "$@"', 'sh'], TestDatabase::php(['-r', 'echo json_encode(Matomo\ArchiveClaim\identity());']));
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $json = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        $this->assertSame(0, proc_close($proc), $err);
        $id = json_decode($json, true);
        $this->assertSame('ns-test', $id['host']);
        $this->assertSame(1, $id['pid']);
        $this->assertNotSame(identity()['pid_namespace'], $id['pid_namespace']);
        $this->assertSame(identity()['boot_id'], $id['boot_id']);
    }

    public function testPhpinfoShowsTheSectionWithoutThePassword(): void
    {
        $cmd = TestDatabase::php(['-d', 'matomo_archive_claim.database=mysql://u:hunter2@db.invalid:3306/m', '-i']);
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $info = stream_get_contents($pipes[1]);
        proc_close($proc);
        $this->assertStringContainsString('matomo_archive_claim support => enabled', $info);
        $this->assertStringContainsString('connection settings => php.ini', $info);
        $this->assertStringContainsString('u@db.invalid:3306/m', $info);
        $this->assertStringContainsString('built for PHP => ' . PHP_VERSION, $info);
        $this->assertStringNotContainsString('hunter2', $info);
    }
}
