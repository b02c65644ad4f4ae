<?php
declare(strict_types=1);

namespace Matomo\ArchiveClaim\Tests;

use PHPUnit\Framework\TestCase;

require_once __DIR__ . '/../support/describe-api.php';

/** The curated stubs must describe exactly what the loaded extension exports. */
final class StubsTest extends TestCase
{
    private const STUBS = __DIR__ . '/../../php/stubs/matomo_archive_claim.stub.php';

    public function testStubsMatchTheLoadedExtension(): void
    {
        $ext = new \ReflectionExtension('matomo_archive_claim');
        $actual = describe_api(array_keys($ext->getFunctions()), $ext->getClassNames());

        // The stubs are loaded in a PHP without the extension, where they are the only definitions.
        $cmd = [PHP_BINARY, __DIR__ . '/../support/describe-api.php', self::STUBS];
        $proc = proc_open($cmd, [1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        $json = stream_get_contents($pipes[1]);
        $err = stream_get_contents($pipes[2]);
        $this->assertSame(0, proc_close($proc), $err);
        $fromStubs = json_decode($json, true);

        $this->assertNotEmpty($actual['functions']);
        $this->assertSame($actual, $fromStubs);
    }

    public function testEveryStubFunctionDocumentsWhatItThrows(): void
    {
        $source = file_get_contents(self::STUBS);
        preg_match_all('#/\*\*((?:(?!\*/).)*)\*/\s*function (\w+)#s', $source, $m, PREG_SET_ORDER);
        $this->assertCount(11, $m);
        foreach ($m as [, $doc, $name]) {
            if (!in_array($name, ["identity", "unregister_process", "background_releases"], true)) {
                $this->assertStringContainsString('@throws', $doc, "$name documents its exceptions");
            }
        }
    }
}
